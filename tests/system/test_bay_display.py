"""The bay display in a real headless chromium, fed by the real daemon while paced cameras ingest."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ingestd.session import DELETE_ORIGINALS
from store.models import AuditEvent
from tests.support.browser import headless_chromium
from tests.support.ceph import free_port
from tests.system.harness import Daemon, SimulatedCamera, wait_for
from tests.system.pacing import paced

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

MIB = 1024 * 1024
HOSTILE_NAME = "<script>王</script>"  # an officer name is the camera's claim: shown, never run
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"  # gitignored
# The tiles as the page shows them, read in one go (the page redraws them on every update).
READ_TILES = """
return Array.from(document.querySelectorAll("#bays .tile")).map((tile) => {
  const text = (selector) => {
    const found = tile.querySelector(selector);
    return found && found.textContent;
  };
  const bar = tile.querySelector(".bar");
  return {
    name: text("h2"), phase: tile.dataset.phase, officer: text(".officer"), serial: text(".serial"),
    detail: text(".detail"), undock: text(".undock"),
    percent: bar && Number(bar.getAttribute("aria-valuenow")),
    opacity: Number(getComputedStyle(tile).opacity), scripts: tile.querySelectorAll("script").length,
  };
});
"""


def tiles(browser: WebDriver) -> dict[str, dict[str, Any]]:
    return {tile["name"]: tile for tile in browser.execute_script(READ_TILES)}


def with_bay_display(daemon: Daemon) -> str:
    """Turn the daemon's bay display on; returns its URL."""
    port = free_port()
    daemon.extra_config = f'\n[bay_display]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'
    return f"http://127.0.0.1:{port}/"


def save(browser: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / name))
    print(f"bay display screenshot: {ARTIFACTS / name}")


def deletion_done(daemon: Daemon) -> dict[str, Any] | None:
    """The details of the daemon's finished deletion of the camera's originals, if it has one."""
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            event = db.scalars(
                select(AuditEvent).where(AuditEvent.action == DELETE_ORIGINALS, AuditEvent.outcome == "done")
            ).first()
            return None if event is None else dict(event.details or {})
    finally:
        catalog.close()


def test_bay_tile_shows_progress_then_safe_to_undock_only_after_the_deletion(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera], tmp_path: Path
) -> None:
    url = with_bay_display(daemon)
    # The operator's name for this dock, from [[dock]], is the tile's name (not the folder's).
    daemon.extra_config += f'\n[[dock]]\nport = "folder:{daemon.docks / "ZFY0801"}"\nlabel = "Bay 3"\n'
    camera = make_camera(
        "ZFY0801", officer_name=HOSTILE_NAME, files=3, size_bytes=4 * MIB, **paced()
    )  # ~12 s to copy at 1 MiB/s
    daemon.start()
    with headless_chromium(tmp_path / "chromium-profile") as browser:
        browser.get(url)
        wait_for(
            "the page to connect",
            lambda: "updated" in browser.execute_script("return document.getElementById('link').textContent"),
        )
        camera.dock(daemon.docks)
        seen: list[dict[str, Any]] = []

        def advanced() -> bool:
            tile = tiles(browser).get("Bay 3")
            if tile is not None and tile["phase"] == "working" and tile["percent"] is not None:
                seen.append(tile)
            return len({t["percent"] for t in seen if 0 < t["percent"] < 100}) >= 2

        wait_for("progress to advance on the tile", advanced, timeout=90, interval=0.3)
        moving = [t["percent"] for t in seen if t["percent"] > 0]
        assert moving[-1] > moving[0]
        assert seen[-1]["serial"] == "ZFY0801"
        assert " left" in seen[-1]["detail"]  # the ETA
        assert all(t["undock"] is None for t in seen)

        def safe() -> dict[str, Any] | None:
            tile = tiles(browser).get("Bay 3")
            if tile is None or tile["phase"] != "safe":
                return None
            # Seen on the page: the deletion it waits for must already be on record.
            assert deletion_done(daemon) is not None, "safe to undock shown before the deletion"
            return tile

        done = wait_for("done, safe to undock", safe, timeout=120, interval=0.3)
        assert done["undock"] == "done, safe to undock"
        assert (deletion_done(daemon) or {}).get("deleted") == 3
        # The hostile name is text on the tile, and no element was made of it.
        assert (done["officer"], done["scripts"]) == (HOSTILE_NAME, 0)
        assert browser.execute_script("return [innerWidth, innerHeight]") == [1280, 800]
        save(browser, "bay-display.png")

        camera.undock(daemon.docks)
        wait_for("the bay to go idle", lambda: tiles(browser)["Bay 3"]["phase"] == "idle", timeout=60)
        assert tiles(browser)["Bay 3"]["officer"] is None  # no history once the camera is gone

        assert daemon.stop() == 0
        link = "return [link.textContent, bays.className]"  # the elements' ids are globals of the page
        wait_for("the page to say it lost the station", lambda: "lost" in browser.execute_script(link)[0])
        assert browser.execute_script(link)[1] == "stale"  # what the tiles say may be old: greyed


def test_bays_side_by_side_show_their_own_camera_and_a_bay_left_empty_dims_without_names(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera], tmp_path: Path
) -> None:
    url = with_bay_display(daemon)
    slow = make_camera("ZFY0811", officer_name="李四", files=3, size_bytes=4 * MIB, **paced())
    quick = make_camera("ZFY0812", officer_name="王五", officer_no="000102", battery=64, files=2)
    left = make_camera("ZFY0813", officer_name="赵六", officer_no="000103", battery=35, files=1)
    daemon.start()
    with headless_chromium(tmp_path / "chromium-profile") as browser:
        browser.get(url)

        def phases() -> dict[str, str]:
            return {name: tile["phase"] for name, tile in tiles(browser).items()}

        left.dock(daemon.docks)
        wait_for("the first camera done", lambda: phases().get("ZFY0813") == "safe", timeout=90)
        left.undock(daemon.docks)
        quick.dock(daemon.docks)
        slow.dock(daemon.docks)

        def copying_beside_done_and_empty() -> dict[str, dict[str, Any]] | None:
            now = tiles(browser)
            wanted = {"ZFY0811": "working", "ZFY0812": "safe", "ZFY0813": "idle"}
            ready = {name: tile["phase"] for name, tile in now.items()} == wanted
            return now if ready and (now["ZFY0811"]["percent"] or 0) > 0 else None

        now = wait_for("one bay copying, one done, one empty", copying_beside_done_and_empty, timeout=90)
        assert (now["ZFY0811"]["officer"], now["ZFY0812"]["officer"]) == ("李四", "王五")
        assert now["ZFY0813"]["officer"] is None  # the officer who left is not shown
        assert now["ZFY0813"]["opacity"] < 0.5  # idle bays dim
        assert now["ZFY0811"]["opacity"] == now["ZFY0812"]["opacity"] == 1.0
        save(browser, "bay-display-bays.png")


def test_a_taken_bay_display_address_refuses_the_start_in_one_line(daemon: Daemon) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        daemon.extra_config = f'\n[bay_display]\nenabled = true\nlisten = "{listen}"\n'
        daemon.base.mkdir(parents=True)
        daemon.write_config()
        done = daemon.run_refused()
    assert done.returncode == 74
    assert done.stderr.strip().splitlines() == [
        f"ingestd: error: bay_display.listen {listen}: cannot listen: Address already in use"
    ]
