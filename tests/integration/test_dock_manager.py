"""The dock manager never waits on a session from the supervising loop: real folder volumes, a real SQLite
catalog and store. A session is held open at its very end by the summary callback (where the daemon's
own end-of-session work runs), so it is still alive when the loop handles the undock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from drivers.simulator.volume import build_volume
from ingestd import records
from ingestd.docking.events import Docked, Undocked
from ingestd.docking.folders import device_for
from ingestd.manager import DockManager
from ingestd.services import Services
from ingestd.session import IngestSettings, SessionSummary
from store.catalog import Catalog
from store.models import CustodyEvent, CustodyKind, Dock, DockVisit
from store.types import utcnow
from tests.support.station import open_station
from tests.system.harness import wait_for

START = datetime(2026, 11, 22, 0, 30, 15, tzinfo=UTC)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    with open_station(
        tmp_path, camera=[{"match": {"SUBSYSTEM": "folder"}, "driver": "mass-storage"}]
    ) as opened:
        yield opened


class HeldSessions:
    """A summary callback that keeps each session's thread alive until `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.ended: list[SessionSummary] = []

    def __call__(self, summary: SessionSummary) -> None:
        self.ended.append(summary)
        self.release.wait(60)


def custody(services: Services) -> list[CustodyKind]:
    with services.catalog.transaction() as db:
        return list(db.scalars(select(CustodyEvent.kind).order_by(CustodyEvent.id)))


def sessions(services: Services) -> int:
    with services.catalog.transaction() as db:
        return len(db.scalars(select(DockVisit.id)).all())


def manager_for(services: Services, held: HeldSessions) -> DockManager:
    settings = IngestSettings(delete_after_ingest=False)
    return DockManager(services, settings, max_concurrent=2, clock=utcnow, on_summary=held)


def camera_folder(tmp_path: Path, serial: str) -> Path:
    volume = tmp_path / "docks" / serial
    build_volume(
        volume, device_serial=serial, officer_name="张三", count=1, size_bytes=4096, start=START, seed=1
    )
    return volume


def test_an_undock_returns_at_once_and_a_redock_waits_for_the_check_out(
    services: Services, tmp_path: Path
) -> None:
    held = HeldSessions()
    manager = manager_for(services, held)
    docked = Docked(device_for(camera_folder(tmp_path, "ZFY6001")))
    manager.handle(docked)
    wait_for("the session at its end", lambda: held.ended)
    manager.handle(Undocked(docked.port))  # the session's thread is still alive: nothing waits on it
    assert custody(services) == [CustodyKind.CHECK_IN]
    manager.handle(docked)  # back in the dock before its previous session has ended
    manager.reap()
    assert sessions(services) == 1  # one session per camera at a time
    assert manager.active_ports() == [docked.port]
    held.release.set()

    def second_session_ended() -> bool:
        manager.reap()
        return len(held.ended) == 2

    wait_for("the waiting dock's session", second_session_ended)
    # The check-out of the first dock is written before the waiting dock checks the camera in again.
    assert custody(services) == [CustodyKind.CHECK_IN, CustodyKind.CHECK_OUT, CustodyKind.CHECK_IN]
    manager.stop(timeout=30)


def test_stop_waits_bounded_and_names_the_sessions_still_running(services: Services, tmp_path: Path) -> None:
    held = HeldSessions()
    manager = manager_for(services, held)
    first = Docked(device_for(camera_folder(tmp_path, "ZFY6002")))
    second = Docked(device_for(camera_folder(tmp_path, "ZFY6003")))
    manager.handle(first)
    manager.handle(second)
    wait_for("both sessions at their end", lambda: len(held.ended) == 2)
    manager.handle(Undocked(first.port))
    with capture_logs() as logs:
        manager.stop(timeout=0.2)
    (still,) = [entry for entry in logs if entry["event"] == "sessions_still_running"]
    assert still["ports"] == sorted([first.port, second.port])
    held.release.set()


def test_two_writers_creating_the_same_dock_at_once_share_one_row(catalog: Catalog) -> None:
    # A session's first step and the progress flush both create a new port's dock row. On PostgreSQL
    # both saw no row and the second insert failed (uq_docks_port), crashing the session of an early dock.
    port = "usb:/devices/pci0000:00/usb1/1-1"
    first_has_inserted = threading.Event()
    release_first = threading.Event()
    ids: list[int] = []
    errors: list[BaseException] = []

    def first() -> None:
        with catalog.transaction() as db:
            ids.append(records.get_or_create_dock(db, port, START).id)
            first_has_inserted.set()
            release_first.wait(timeout=30)

    def second() -> None:
        try:
            with catalog.transaction() as db:
                ids.append(records.get_or_create_dock(db, port, START).id)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    writers = [threading.Thread(target=first), threading.Thread(target=second)]
    writers[0].start()
    assert first_has_inserted.wait(timeout=30)
    writers[1].start()
    writers[1].join(timeout=1.0)  # the second waits for the first's row (its lock, or SQLite's writer)
    release_first.set()
    for writer in writers:
        writer.join(timeout=30)
    assert errors == []
    assert len(ids) == 2
    assert ids[0] == ids[1]
    with catalog.transaction() as db:
        assert len(db.scalars(select(Dock).where(Dock.port == port)).all()) == 1
