"""A serial camera docked by its tty alone: its storage arrives later, or it re-enumerates after SetMSDC
and comes back on the same port with storage only. The real dock manager and sessions, a real SQLite
catalog and store, the camera simulator on a real pty with its volume on a real loop device; the ports
and USB IDs are those recorded in the vm tier's guest."""

from __future__ import annotations

import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

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


RULE = {
    "match": {"ID_VENDOR_ID": TTY_PROPS["ID_VENDOR_ID"]},
    "driver": "serial",
    "password": "000000",
    "filesystems": ["ext4"],
}


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    with open_station(tmp_path / "station", camera=[RULE]) as opened:
        yield opened


@pytest.fixture
def hub_services(tmp_path: Path) -> Iterator[Services]:
    """A station that groups the USB devices behind one hub as one camera (as the vm tier's guest)."""
    with open_station(tmp_path / "station", camera=[RULE], detection={"usb_grouping": "hub"}) as opened:
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
    services: Services,
    camera: SimulatedCamera,
    ended: Ended,
    tty_props: dict[str, str] = TTY_PROPS,
    **settings: float,
) -> DockManager:
    """A manager whose session of `camera`, docked by its tty alone, is past SetMSDC awaiting storage."""
    manager = manager_for(services, ended, **settings)
    manager.handle(Docked(DeviceInfo(port=PORT, properties=tty_props, tty=camera.tty)))
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


def with_usb_serial(properties: dict[str, str], usb_serial: str | None) -> dict[str, str]:
    changed = {key: value for key, value in properties.items() if key != "ID_SERIAL_SHORT"}
    if usb_serial is not None:
        changed["ID_SERIAL_SHORT"] = usb_serial
    return changed


def refused_and_unplugged_once(
    services: Services, camera: SimulatedCamera, tty_props: dict[str, str], usb_serial: str | None
) -> MutableMapping[str, Any]:
    """Dock `camera` by `tty_props`, let it leave in the grace, and have a device with `usb_serial` take
    its port: that device is refused, the session ends unplugged with nothing stored or deleted, and the
    camera is checked out once. Returns the refusal's log line."""
    ended = Ended()
    manager = awaiting_storage(services, camera, ended, tty_props, reenumerate_s=1.5)
    manager.handle(Undocked(PORT))
    impostor = with_usb_serial(DISK_PROPS, usb_serial)
    with capture_logs() as logs:
        manager.handle(Docked(DeviceInfo(port=PORT, properties=impostor, block=camera.block)))
    (refused,) = [e for e in logs if e["event"] == "reenumerated_device_refused"]
    wait_for("the grace to expire and the camera to be undocked", lambda: reaped_after(manager, ended))
    ((state, reason),) = visits(services)
    assert state is SessionState.UNPLUGGED
    assert reason is not None
    assert "not back within 1.5 s" in reason
    assert (stored(services), deletions(services)) == (0, 0)
    assert custody(services) == [CustodyKind.CHECK_IN, CustodyKind.CHECK_OUT]  # checked out once
    manager.stop(timeout=30)
    return refused


@pytest.mark.parametrize("usb_serial", ["ZFY9999", None], ids=["another-serial", "no-serial"])
def test_a_device_with_another_usb_serial_is_refused_and_a_camera_not_back_is_unplugged_once(
    services: Services, camera: SimulatedCamera, usb_serial: str | None
) -> None:
    # A device without a USB serial cannot show it is the camera that docked with one.
    refused = refused_and_unplugged_once(services, camera, TTY_PROPS, usb_serial)
    assert (refused["usb_serial"], refused["expected_usb_serial"]) == (usb_serial, SERIAL)


@pytest.mark.parametrize("usb_serial", ["0000001", None], ids=["a-serial", "no-serial"])
def test_a_device_taking_the_port_of_a_serial_less_camera_is_refused(
    services: Services, camera: SimulatedCamera, usb_serial: str | None
) -> None:
    # Docked without a USB serial, the camera can only be told by the serial it reported over its
    # authenticated control channel; a device that shows another, or none, is not its storage.
    serial_less = with_usb_serial(TTY_PROPS, None)
    refused = refused_and_unplugged_once(services, camera, serial_less, usb_serial)
    assert (refused["usb_serial"], refused["expected_usb_serial"]) == (usb_serial, None)
    assert refused["reported_serial"] == SERIAL


def test_a_serial_less_camera_back_with_the_usb_serial_it_reported_stays_one_session(
    services: Services, camera: SimulatedCamera
) -> None:
    # Its USB serial after the switch is the device serial it reported over its control channel.
    ended = Ended()
    manager = awaiting_storage(services, camera, ended, with_usb_serial(TTY_PROPS, None))
    manager.handle(Undocked(PORT))
    with capture_logs() as logs:
        manager.handle(Docked(DeviceInfo(port=PORT, properties=DISK_PROPS, block=camera.block)))
    assert "camera_reenumerated" in [e["event"] for e in logs]
    summary = ended_alone(ended)
    assert (summary.state, summary.files) == (SessionState.DONE, 2)
    assert visits(services) == [(SessionState.DONE, None)]
    undock_checks_out_once(services, manager)


@pytest.mark.parametrize("usb_serial", ["ZFY9999", None], ids=["another-serial", "no-serial"])
def test_storage_arrived_with_another_usb_serial_is_not_offered(
    hub_services: Services, camera: SimulatedCamera, usb_serial: str | None
) -> None:
    # Behind the camera's hub any disk is a child of the port: one with another USB serial than the
    # dock's, or none, is not mounted as the camera's volume.
    ended = Ended()
    manager = awaiting_storage(hub_services, camera, ended, storage_wait_s=1.0)
    assert camera.block is not None
    with capture_logs() as logs:
        manager.handle(StorageArrived(PORT, camera.block, with_usb_serial(DISK_PROPS, usb_serial)))
    (refused,) = [e for e in logs if e["event"] == "storage_refused"]
    assert (refused["usb_serial"], refused["expected_usb_serial"]) == (usb_serial, SERIAL)
    assert ended_alone(ended).reason == "no storage appeared within 1 s of SetMSDC"
    assert (stored(hub_services), deletions(hub_services)) == (0, 0)
    undock_checks_out_once(hub_services, manager)


@pytest.mark.parametrize(
    ("grouping", "offered"), [("device", True), ("hub", False)], ids=["own-usb-device", "behind-a-hub"]
)
def test_late_storage_of_a_serial_less_camera_is_taken_only_from_its_own_usb_device(
    tmp_path: Path, camera: SimulatedCamera, grouping: str, offered: bool
) -> None:
    # Grouped by USB device, a disk that arrives with no remove since the dock is an interface of the
    # very device that docked; behind a hub it is any device there, and nothing ties it to the camera.
    assert camera.block is not None
    sections = {"camera": [RULE], "detection": {"usb_grouping": grouping}}
    with open_station(tmp_path / "station", **sections) as services:
        ended = Ended()
        manager = awaiting_storage(
            services, camera, ended, with_usb_serial(TTY_PROPS, None), storage_wait_s=2.0
        )
        disk = with_usb_serial(DISK_PROPS, "0000001")
        manager.handle(StorageArrived(PORT, camera.block, disk))
        summary = ended_alone(ended)
        assert (summary.state is SessionState.DONE) is offered
        assert stored(services) == (2 if offered else 0)
        undock_checks_out_once(services, manager)


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
