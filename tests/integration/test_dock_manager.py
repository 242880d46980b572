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
from ingestd.docking.events import Docked, Undocked
from ingestd.docking.folders import device_for
from ingestd.manager import DockManager
from ingestd.services import Services
from ingestd.session import IngestSettings, SessionSummary
from store.models import CustodyEvent, CustodyKind, DockSession
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
    with services.catalog.transaction() as session:
        return list(session.scalars(select(CustodyEvent.kind).order_by(CustodyEvent.id)))


def sessions(services: Services) -> int:
    with services.catalog.transaction() as session:
        return len(session.scalars(select(DockSession.id)).all())


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
