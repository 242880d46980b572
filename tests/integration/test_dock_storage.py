"""A serial camera docked by its tty alone: its storage arrives later, or it re-enumerates after SetMSDC
and comes back on the same port with storage only. The real dock manager and sessions, a real SQLite
catalog and store, the camera simulator on a real pty with its volume on a real loop device; the ports
and USB IDs are those recorded in the vm tier's guest."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from drivers.base import DeviceInfo
from drivers.mount import disk_sequence
from ingestd.docking.events import Docked, StorageArrived, Undocked
from ingestd.manager import DockManager
from ingestd.services import Services
from ingestd.session import AWAITING_STORAGE, DELETE_ORIGINALS, IngestSettings, SessionSummary
from store.models import AuditEvent, CustodyEvent, CustodyKind, Dock, DockVisit, Recording, SessionState
from store.types import utcnow
from tests.support.guest_usb import GUEST_DISK_PROPS, GUEST_HUB, GUEST_TTY_PROPS
from tests.support.loopdev import attached, require_root_tools
from tests.support.station import open_station
from tests.system.harness import SimulatedCamera, wait_for

PORT = GUEST_HUB.devpath  # the port both of the camera's USB devices sit behind (grouped by hub)
SERIAL = "ZFY7301"
TTY_PROPS = {**GUEST_TTY_PROPS, "ID_SERIAL_SHORT": SERIAL}
DISK_PROPS = {**GUEST_DISK_PROPS, "ID_SERIAL_SHORT": SERIAL}


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    rule = {
        "match": {"ID_VENDOR_ID": TTY_PROPS["ID_VENDOR_ID"]},
        "driver": "serial",
        "password": "000000",
        "filesystems": ["ext4"],
    }
    with open_station(tmp_path / "station", camera=[rule]) as opened:
        yield opened


@pytest.fixture
def camera(tmp_path: Path) -> Iterator[SimulatedCamera]:
    require_root_tools("mkfs.ext4")
    simulated = SimulatedCamera(
        base=tmp_path / "cameras", serial=SERIAL, files=2, size_bytes=64 * 1024, image=True
    )
    simulated.start()
    try:
        yield simulated
    finally:
        simulated.close()


class Ended:
    def __init__(self) -> None:
        self.summaries: list[SessionSummary] = []
        self.event = threading.Event()

    def __call__(self, summary: SessionSummary) -> None:
        self.summaries.append(summary)
        self.event.set()


def manager_for(
    services: Services, ended: Ended, *, storage_wait_s: float = 30.0, reenumerate_s: float = 30.0
) -> DockManager:
    ingest = IngestSettings(storage_wait_s=storage_wait_s, reenumerate_s=reenumerate_s)
    return DockManager(services, ingest, max_concurrent=2, clock=utcnow, on_summary=ended)


def awaiting_storage(
    services: Services, camera: SimulatedCamera, ended: Ended, **settings: float
) -> DockManager:
    """A manager whose session of `camera`, docked by its tty alone, is past SetMSDC awaiting storage."""
    manager = manager_for(services, ended, **settings)
    manager.handle(Docked(DeviceInfo(port=PORT, properties=TTY_PROPS, tty=camera.tty)))
    wait_for_dock_state(services, manager, AWAITING_STORAGE)
    return manager


def wait_for_dock_state(services: Services, manager: DockManager, state: str) -> None:
    def reached() -> bool:
        manager.flush_progress()
        with services.catalog.transaction() as db:
            return db.scalar(select(Dock.state).where(Dock.port == PORT)) == state

    wait_for(f"the dock to be {state}", reached)


def ended_alone(ended: Ended) -> SessionSummary:
    wait_for("the session's end", ended.event.is_set)
    (summary,) = ended.summaries
    return summary


def custody(services: Services) -> list[CustodyKind]:
    with services.catalog.transaction() as db:
        return list(db.scalars(select(CustodyEvent.kind).order_by(CustodyEvent.id)))


def visits(services: Services) -> list[tuple[SessionState, str | None]]:
    with services.catalog.transaction() as db:
        return [(v.state, v.failure_reason) for v in db.scalars(select(DockVisit).order_by(DockVisit.id))]


def stored(services: Services) -> int:
    with services.catalog.transaction() as db:
        return len(db.scalars(select(Recording.id)).all())


def deletions(services: Services) -> int:
    with services.catalog.transaction() as db:
        return len(db.scalars(select(AuditEvent.seq).where(AuditEvent.action == DELETE_ORIGINALS)).all())


def undock_checks_out_once(services: Services, manager: DockManager) -> None:
    manager.handle(Undocked(PORT))
    assert custody(services) == [CustodyKind.CHECK_IN, CustodyKind.CHECK_OUT]
    manager.stop(timeout=30)


def reaped_after(manager: DockManager, ended: Ended) -> bool:
    manager.reap()
    return ended.event.is_set() and not manager.active_ports()


def test_a_camera_docked_by_its_tty_gets_its_late_storage_and_is_ingested(
    services: Services, camera: SimulatedCamera
) -> None:
    assert camera.block is not None
    ended = Ended()
    manager = awaiting_storage(services, camera, ended)
    manager.handle(StorageArrived(PORT, camera.block, DISK_PROPS))
    summary = ended_alone(ended)
    assert (summary.state, summary.files) == (SessionState.DONE, 2)
    assert stored(services) == 2
    assert custody(services) == [CustodyKind.CHECK_IN]
    manager.stop(timeout=30)


def test_no_storage_in_time_ends_the_session_with_its_reason_and_deletes_nothing(
    services: Services, camera: SimulatedCamera
) -> None:
    ended = Ended()
    manager = manager_for(services, ended, storage_wait_s=1.0)
    manager.handle(Docked(DeviceInfo(port=PORT, properties=TTY_PROPS, tty=camera.tty)))
    assert ended_alone(ended).reason == "no storage appeared within 1 s of SetMSDC"
    assert visits(services) == [(SessionState.FAILED, "no storage appeared within 1 s of SetMSDC")]
    assert (stored(services), deletions(services)) == (0, 0)
    undock_checks_out_once(services, manager)


def test_a_camera_that_re_enumerates_after_setmsdc_stays_one_session_without_a_check_out(
    services: Services, camera: SimulatedCamera
) -> None:
    assert camera.block is not None
    ended = Ended()
    manager = awaiting_storage(services, camera, ended)
    with capture_logs() as logs:
        manager.handle(Undocked(PORT))  # its USB device went: tty and disk removed
        manager.reap()
        assert custody(services) == [CustodyKind.CHECK_IN]
        assert manager.active_ports() == [PORT]
        # Back on the same port with storage only, the same USB serial.
        manager.handle(Docked(DeviceInfo(port=PORT, properties=DISK_PROPS, block=camera.block)))
    assert [e["event"] for e in logs if e["event"].startswith("camera_")] == [
        "camera_reenumerating",
        "camera_reenumerated",
    ]
    summary = ended_alone(ended)
    assert (summary.state, summary.files) == (SessionState.DONE, 2)
    assert visits(services) == [(SessionState.DONE, None)]  # one session, no new check-in
    assert custody(services) == [CustodyKind.CHECK_IN]
    undock_checks_out_once(services, manager)


def test_a_device_with_another_usb_serial_is_refused_and_a_camera_not_back_is_unplugged_once(
    services: Services, camera: SimulatedCamera
) -> None:
    ended = Ended()
    manager = awaiting_storage(services, camera, ended, reenumerate_s=1.5)
    manager.handle(Undocked(PORT))
    impostor = {**DISK_PROPS, "ID_SERIAL_SHORT": "ZFY9999"}
    with capture_logs() as logs:
        manager.handle(Docked(DeviceInfo(port=PORT, properties=impostor, block=camera.block)))
    (refused,) = [e for e in logs if e["event"] == "reenumerated_device_refused"]
    assert (refused["usb_serial"], refused["expected_usb_serial"]) == ("ZFY9999", SERIAL)
    wait_for("the grace to expire and the camera to be undocked", lambda: reaped_after(manager, ended))
    ((state, reason),) = visits(services)
    assert state is SessionState.UNPLUGGED
    assert reason is not None
    assert "not back within 1.5 s" in reason
    assert (stored(services), deletions(services)) == (0, 0)
    assert custody(services) == [CustodyKind.CHECK_IN, CustodyKind.CHECK_OUT]  # checked out once
    manager.stop(timeout=30)


def test_a_composite_cameras_disk_gone_at_the_mount_is_waited_for_and_it_stays_one_session(
    services: Services, camera: SimulatedCamera, tmp_path: Path
) -> None:
    # A composite camera docks with its tty and its disk; after SetMSDC it re-enumerates, so the disk it
    # docked with is gone (its node removed) when the session mounts it.
    assert camera.block is not None
    ended = Ended()
    manager = manager_for(services, ended)
    gone = str(tmp_path / "sdb1")  # the node of a disk that went
    manager.handle(Docked(DeviceInfo(port=PORT, properties=TTY_PROPS, tty=camera.tty, block=gone)))
    wait_for_dock_state(services, manager, AWAITING_STORAGE)
    manager.handle(Undocked(PORT))
    manager.handle(Docked(DeviceInfo(port=PORT, properties=DISK_PROPS, block=camera.block)))
    summary = ended_alone(ended)
    assert (summary.state, summary.files) == (SessionState.DONE, 2)
    assert visits(services) == [(SessionState.DONE, None)]
    undock_checks_out_once(services, manager)


def test_a_node_that_names_another_disk_by_the_mount_is_not_mounted_and_the_camera_is_waited_for(
    services: Services, camera: SimulatedCamera
) -> None:
    # The disk it docked with went, and another instance got its name before the session mounted it
    # (a re-enumerated disk): its DISKSEQ differs from the dock's, so the name is not trusted.
    assert camera.block is not None
    now = disk_sequence(camera.block)
    assert now is not None
    ended = Ended()
    manager = manager_for(services, ended)
    stale = {**TTY_PROPS, "DISKSEQ": str(int(now) - 1)}
    with capture_logs() as logs:
        manager.handle(Docked(DeviceInfo(port=PORT, properties=stale, tty=camera.tty, block=camera.block)))
        wait_for_dock_state(services, manager, AWAITING_STORAGE)
    (gone,) = [e for e in logs if e["event"] == "volume_gone_at_mount"]
    assert "is not the disk that docked" in gone["error"]
    manager.handle(Undocked(PORT))
    manager.handle(
        Docked(DeviceInfo(port=PORT, properties={**DISK_PROPS, "DISKSEQ": now}, block=camera.block))
    )
    summary = ended_alone(ended)
    assert (summary.state, summary.files) == (SessionState.DONE, 2)
    assert visits(services) == [(SessionState.DONE, None)]
    undock_checks_out_once(services, manager)


def test_the_disk_sequence_tells_a_re_attached_disk_from_the_one_before(tmp_path: Path) -> None:
    require_root_tools()
    image = tmp_path / "card.img"
    with image.open("wb") as out:
        out.truncate(1024 * 1024)
    with attached(image) as device:
        first = disk_sequence(device)
        assert first is not None
        assert first == Path(f"/sys/class/block/{Path(device).name}/diskseq").read_text().strip()
    with attached(image) as device:
        assert disk_sequence(device) not in (None, first)
    assert disk_sequence(str(tmp_path / "sdb1")) is None  # no such node
