"""The dock lifecycle through the real daemon: a camera docks as soon as its driver can start (a real
uevent for a loop image), and a serial camera that re-enumerates after SetMSDC (its control tty gone,
its port back with storage only) stays one session. Re-enumeration is modelled on the watched-folder
port: the camera's dock directory leaves and comes back with a descriptor naming only its disk, a
loop device, as the vm tier's guest does with a USB device."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from ingestd.docking.folders import DESCRIPTOR
from ingestd.session import DELETE_ORIGINALS
from store.models import AuditEvent, CustodyEvent, CustodyKind, DockVisit, SessionState
from tests.support.loopdev import attached, mounted, require_root_tools
from tests.system.harness import Daemon, SimulatedCamera, wait_for
from tests.system.test_daemon import stored_digests, wait_sessions
from tests.system.test_daemon_block import camera_image

SETTLE_S = 30.0  # the config's longest: a dock that waited it out would not be "early"


def test_a_storage_camera_docks_at_its_uevent_without_waiting_out_the_settle_window(
    block_daemon: Daemon, tmp_path: Path
) -> None:
    image = camera_image(tmp_path, "ZFY7501")
    block_daemon.settle_seconds = SETTLE_S
    block_daemon.start()
    with attached(image) as device:
        (early,) = wait_for("the early dock", lambda: block_daemon.events("docked_early"))
        assert early["block"] == device
        (session,) = wait_sessions(block_daemon, "ZFY7501")
        assert session.state is SessionState.DONE
        assert len(stored_digests(block_daemon, "ZFY7501")) == 2


def describe(camera: SimulatedCamera, **fields: object) -> None:
    """Rewrite the camera's dock descriptor (as the station's udev glue would for the device it sees)."""
    descriptor = {"properties": {"ZFY_TRANSPORT": "serial", "ID_SERIAL_SHORT": camera.serial}, **fields}
    (camera.staging / DESCRIPTOR).write_text(json.dumps(descriptor), encoding="utf-8")


def dock_tty_only(daemon: Daemon, camera: SimulatedCamera) -> None:
    """Dock the camera by its control tty alone and wait until its session, past SetMSDC, awaits storage."""
    describe(camera, tty=camera.tty, storage="later")
    camera.dock(daemon.docks)
    wait_for("the session to await the camera's storage", lambda: daemon.events("awaiting_storage"))


def custody_kinds(daemon: Daemon) -> list[CustodyKind]:
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            return list(db.scalars(select(CustodyEvent.kind).order_by(CustodyEvent.id)))
    finally:
        catalog.close()


def sessions_of(daemon: Daemon) -> list[tuple[SessionState, str | None]]:
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            return [(v.state, v.failure_reason) for v in db.scalars(select(DockVisit).order_by(DockVisit.id))]
    finally:
        catalog.close()


def deletions_audited(daemon: Daemon) -> int:
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            return len(db.scalars(select(AuditEvent.seq).where(AuditEvent.action == DELETE_ORIGINALS)).all())
    finally:
        catalog.close()


def test_a_serial_camera_that_re_enumerates_with_storage_only_is_one_session_and_wiped_after_proof(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera], tmp_path: Path
) -> None:
    require_root_tools("mkfs.ext4")
    camera = make_camera("ZFY7502", files=2, image=True)
    assert camera.block is not None
    daemon.start()
    dock_tty_only(daemon, camera)
    camera.undock(daemon.docks)  # SetMSDC: the camera's USB device goes...
    wait_for("the re-enumeration to be noticed", lambda: daemon.events("camera_reenumerating"))
    describe(camera, block=camera.block)  # ...and comes back on the same port with its disk only
    camera.dock(daemon.docks)
    (session,) = wait_sessions(daemon, "ZFY7502")
    assert session.state is SessionState.DONE
    assert len(daemon.events("camera_reenumerated")) == 1
    assert custody_kinds(daemon) == [CustodyKind.CHECK_IN]  # no check-out, no second check-in
    assert len(stored_digests(daemon, "ZFY7502")) == 2
    with mounted(camera.block, tmp_path / "inspect", "ro") as volume:
        assert list(volume.rglob("*.MP4")) == []  # wiped after proof, from the re-enumerated disk
    camera.undock(daemon.docks)
    wait_for("the check-out", lambda: custody_kinds(daemon) == [CustodyKind.CHECK_IN, CustodyKind.CHECK_OUT])


def test_a_camera_not_back_within_the_grace_is_unplugged_checked_out_once_and_keeps_its_files(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera], tmp_path: Path
) -> None:
    require_root_tools("mkfs.ext4")
    daemon.detection_config = "reenumerate_seconds = 1.0"
    camera = make_camera("ZFY7503", files=2, image=True)
    assert camera.block is not None
    daemon.start()
    dock_tty_only(daemon, camera)
    camera.undock(daemon.docks)
    (session,) = wait_sessions(daemon, "ZFY7503")
    assert session.state is SessionState.UNPLUGGED
    assert session.failure_reason is not None
    assert "not back within 1 s" in session.failure_reason
    wait_for("the check-out", lambda: custody_kinds(daemon) == [CustodyKind.CHECK_IN, CustodyKind.CHECK_OUT])
    assert deletions_audited(daemon) == 0
    with mounted(camera.block, tmp_path / "inspect", "ro") as volume:
        assert len(list(volume.rglob("*.MP4"))) == 2  # nothing deleted
    assert sessions_of(daemon) == [(SessionState.UNPLUGGED, session.failure_reason)]
