"""The bay display in a real headless chromium, fed by the real daemon while a paced camera ingests."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ingestd.session import DELETE_ORIGINALS
from store.models import AuditEvent
from tests.support.browser import headless_chromium
from tests.support.ceph import free_port
from tests.system.harness import Daemon, SimulatedCamera, wait_for
from tests.system.pacing import paced

MIB = 1024 * 1024
HOSTILE_NAME = "<script>王</script>"  # an officer name is the camera's claim: shown, never run
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"  # gitignored


def deletion_done(daemon: Daemon) -> dict[str, Any] | None:
    """The details of the daemon's finished deletion of the camera's originals, if it has one."""
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as session:
            event = session.scalars(
                select(AuditEvent).where(AuditEvent.action == DELETE_ORIGINALS, AuditEvent.outcome == "done")
            ).first()
            return None if event is None else dict(event.details or {})
    finally:
        catalog.close()


def test_bay_tile_shows_progress_then_safe_to_undock_only_after_the_deletion(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By  # noqa: PLC0415 - selenium is there once the browser is

    port = free_port()
    daemon.extra_config = f'\n[bay_display]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'
    camera = make_camera(
        "ZFY0801", officer_name=HOSTILE_NAME, files=3, size_bytes=4 * MIB, **paced()
    )  # ~12 s to copy at 1 MiB/s
    daemon.start()
    with headless_chromium(tmp_path / "chromium-profile") as browser:
        browser.get(f"http://127.0.0.1:{port}/")
        wait_for("the page to connect", lambda: "updated" in browser.find_element(By.ID, "link").text)
        camera.dock(daemon.docks)
        percents: list[float] = []
        shot = tmp_path / "bay-display.png"

        def tile(phase: str) -> Any:
            found = browser.find_elements(By.CSS_SELECTOR, f'#bays .tile[data-phase="{phase}"]')
            return found[0] if found else None

        def advanced() -> bool:
            working = tile("working")
            bars = working.find_elements(By.CSS_SELECTOR, ".bar") if working else []
            if bars:
                percents.append(float(bars[0].get_attribute("aria-valuenow") or 0))
            return len({p for p in percents if 0 < p < 100}) >= 2

        wait_for("progress to advance on the tile", advanced, timeout=90, interval=0.3)
        assert percents[-1] > min(p for p in percents if p > 0)
        working = tile("working")
        assert working.find_element(By.CSS_SELECTOR, ".serial").text == "ZFY0801"
        assert "left" in working.find_element(By.CSS_SELECTOR, ".detail").text
        assert tile("safe") is None
        browser.save_screenshot(str(tmp_path / "bay-display-copying.png"))

        def safe() -> Any:
            found = tile("safe")
            # Seen on the page: the deletion it waits for must already be on record.
            if found is not None:
                assert deletion_done(daemon) is not None, "safe to undock shown before the deletion"
            return found

        done = wait_for("done, safe to undock", safe, timeout=120, interval=0.3)
        assert done.find_element(By.CSS_SELECTOR, ".undock").text == "done, safe to undock"
        assert (deletion_done(daemon) or {}).get("deleted") == 3
        # The hostile name is text on the tile, and no element was made of it.
        assert done.find_element(By.CSS_SELECTOR, ".officer").text == HOSTILE_NAME
        assert browser.find_elements(By.CSS_SELECTOR, "#bays script") == []
        assert browser.execute_script("return [innerWidth, innerHeight]") == [1280, 800]
        browser.save_screenshot(str(shot))
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(shot, ARTIFACTS / shot.name)
        print(f"bay display screenshot: {ARTIFACTS / shot.name}")

        camera.undock(daemon.docks)
        wait_for("the bay to go idle", lambda: tile("idle"), timeout=60, interval=0.3)
        assert HOSTILE_NAME not in browser.find_element(By.ID, "bays").text  # no history once it's gone
