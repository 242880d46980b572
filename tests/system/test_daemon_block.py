"""Block-device cameras through the real kernel uevent netlink, and a store that runs out of space."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from drivers.base import CameraIdentity
from drivers.mass_storage import IDENTITY_FILE, format_identity_file
from drivers.mp4 import write_mp4
from ingestd.control.client import call
from ingestd.docking.udev import UDEVD_CONTROL
from store.models import Camera, CustodyEvent, CustodyKind, Flag, FlagKind, SessionState
from tests.support.loopdev import (
    attached,
    ext4_filesystem,
    image_with_unreadable_file,
    mounted,
    require_root_tools,
)
from tests.support.objectstore import unseal_tree
from tests.system.harness import Daemon, SimulatedCamera, wait_for
from tests.system.test_control import ctl
from tests.system.test_daemon import ingestctl_verify, stored_digests, wait_sessions

START = datetime.now(UTC) - timedelta(hours=5)
MIB = 1024 * 1024


def camera_image(tmp_path: Path, serial: str) -> Path:
    """A camera card: identity file, two good recordings and one whose medium fails with EIO."""
    content = tmp_path / f"{serial}-content"
    content.mkdir()
    identity = CameraIdentity(serial, "000201", "赵六", "110105000000", "朝阳分局", source="identity-file")
    (content / IDENTITY_FILE).write_bytes(format_identity_file(identity))
    for number in (1, 2):
        write_mp4(
            content / f"GOOD{number}.MP4",
            created_at=START + timedelta(minutes=number),
            payload_size=300_000,
            duration_s=60,
        )
    write_mp4(content / "BAD.MP4", created_at=START, payload_size=60_000, duration_s=60)
    # The daemon's rule matches *-camera.img backing files.
    return image_with_unreadable_file(content, tmp_path / f"{serial}-camera.img", "BAD.MP4")


def test_the_default_event_source_docks_without_udevd_and_says_which_it_chose(tmp_path: Path) -> None:
    require_root_tools("mkfs.ext4", "debugfs")
    daemon = Daemon(base=tmp_path / "station", udev=True, udev_source=None)  # the default: auto
    image = camera_image(tmp_path, "ZFY6003")
    try:
        daemon.start()
        [chosen] = daemon.events("udev_source")
        assert chosen["setting"] == "auto"
        if not UDEVD_CONTROL.exists():  # this host (a container): no udevd, so the kernel's own events
            assert chosen["source"] == "kernel", chosen
            assert "udevd is not running" in chosen["why"]
        with attached(image):
            (session,) = wait_sessions(daemon, "ZFY6003")  # docked: the old default heard nothing here
            assert session.state is SessionState.DONE
        shown = ctl(daemon, "status", "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["detection"] == {
            "udev": {"setting": "auto", "source": chosen["source"], "why": chosen["why"]},
            "watch_folders": [str(daemon.docks)],
        }
        table = ctl(daemon, "status")
        assert table.returncode == 0, table.stderr
        watching = f"watching: udev {chosen['source']} events ({chosen['why']}); folder {daemon.docks}"
        assert watching in table.stdout.splitlines(), table.stdout
    finally:
        daemon.close()
        unseal_tree(daemon.base)


def test_attaching_a_camera_image_is_a_real_uevent_dock_and_read_errors_are_flagged(
    block_daemon: Daemon, tmp_path: Path
) -> None:
    image = camera_image(tmp_path, "ZFY6001")
    block_daemon.start()
    with attached(image) as device:
        (session,) = wait_sessions(block_daemon, "ZFY6001")
        assert session.state is SessionState.DONE
        assert session.clock_state == "unsupported"  # plain storage: reported, not hidden
        assert len(stored_digests(block_daemon, "ZFY6001")) == 2
        catalog = block_daemon.catalog()
        try:
            with catalog.transaction() as db:
                details = db.scalars(select(Flag.details).where(Flag.kind == FlagKind.FAILED_FILE)).all()
                assert any(
                    d.get("file") == "BAD.MP4" and "read failed" in str(d.get("reason")) for d in details
                )
                camera = db.scalars(select(Camera).where(Camera.device_serial == "ZFY6001")).one()
                assert camera.assigned_officer is not None
                assert camera.assigned_officer.name == "赵六"
        finally:
            catalog.close()
        port = block_daemon.events("ingest_summary")[-1]["port"]
        assert port.endswith(Path(device).name)
    # Detached: the daemon sees the kernel's change event and checks the camera out.
    wait_for("check-out after detach", lambda: checkout_count(block_daemon) == 1)
    with attached(image) as device, mounted(device, tmp_path / "inspect", "ro") as volume:
        left = sorted(path.name for path in volume.iterdir() if path.is_file())
    assert left == ["BAD.MP4", IDENTITY_FILE]  # proven files deleted; the unreadable one kept
    assert block_daemon.stop() == 0
    assert ingestctl_verify(block_daemon)["clean"] is True


def checkout_count(daemon: Daemon) -> int:
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            return len(
                db.scalars(select(CustodyEvent.id).where(CustodyEvent.kind == CustodyKind.CHECK_OUT)).all()
            )
    finally:
        catalog.close()


def test_a_full_store_raises_an_alarm_leaves_the_camera_untouched_and_other_docks_go_on(
    tmp_path: Path, make_camera: Callable[..., SimulatedCamera]
) -> None:
    require_root_tools("mkfs.ext4")
    big = make_camera("ZFY7001", files=1, size_bytes=96 * MIB)
    small = make_camera("ZFY7002", files=3, size_bytes=1 * MIB)
    (big_file,) = big.recordings()
    with ext4_filesystem(tmp_path, 64, name="storefs") as store_fs:
        daemon = Daemon(base=tmp_path / "station", store_root=store_fs / "store")
        try:
            daemon.start()
            volume = big.dock(daemon.docks)
            (failed,) = wait_sessions(daemon, "ZFY7001")
            assert failed.state is SessionState.FAILED
            assert failed.failure_reason is not None
            assert failed.failure_reason.startswith("store full")
            assert daemon.events("store_full_alarm")
            status = wait_for("the alarm in STATUS", lambda: alarm_in_status(daemon))
            assert "ZFY7001" in status
            assert big.recordings(volume) == [volume / big_file.relative_to(big.staging)]  # untouched
            catalog = daemon.catalog()
            try:
                with catalog.transaction() as db:
                    assert db.scalars(select(Flag.kind).where(Flag.kind == FlagKind.STORE_FULL)).all()
            finally:
                catalog.close()
            small.dock(daemon.docks)
            (done,) = wait_sessions(daemon, "ZFY7002")
            assert done.state is SessionState.DONE
            assert done.files_done == 3
            assert daemon.stop() == 0
            report = ingestctl_verify(daemon)
            assert report["clean"] is True, json.dumps(report)
        finally:
            daemon.close()
            unseal_tree(store_fs)
            unseal_tree(daemon.base)


def alarm_in_status(daemon: Daemon) -> str | None:
    status = daemon.status()
    return status if "ALARM store full" in status else None


def test_a_serial_camera_whose_volume_is_a_loop_image_is_mounted_read_only_and_wiped_after_proof(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera], tmp_path: Path
) -> None:
    require_root_tools("mkfs.ext4")
    camera = make_camera("ZFY7101", files=3, image=True, drift_s=-2.0)
    assert camera.block is not None
    expected = {path.name for path in camera.recordings()}
    daemon.start()
    camera.dock(daemon.docks)
    (session,) = wait_sessions(daemon, "ZFY7101")
    assert session.state is SessionState.DONE
    assert session.clock_offset_s is not None
    assert abs(session.clock_offset_s + 2.0) < 0.02
    assert len(stored_digests(daemon, "ZFY7101")) == len(expected) == 3
    with mounted(camera.block, tmp_path / "inspect", "ro") as volume:
        left = {path.name for path in volume.rglob("*.MP4")}
    assert left == set()  # wiped from the image itself, through a temporary read-write remount
    assert daemon.events("originals_deleted")[-1]["device"].startswith("serial:")


def test_an_ext4_camera_volume_is_refused_unmounted_where_the_rule_keeps_the_default_filesystems(
    tmp_path: Path,
) -> None:
    require_root_tools("mkfs.ext4", "debugfs", "blkid")
    image = camera_image(tmp_path, "ZFY6101")
    daemon = Daemon(base=tmp_path / "station", udev=True, camera_filesystems=("vfat", "exfat"))
    try:
        daemon.start()
        with attached(image) as device:
            why = (
                f"{device}: filesystem 'ext4' is not allowed for this camera (allowed: vfat, exfat; "
                "a [[camera]] rule's filesystems can allow more)"
            )

            def ended() -> list[dict[str, object]]:
                return [
                    e for e in daemon.events("ingest_summary") if str(e["port"]).endswith(Path(device).name)
                ]

            [summary] = wait_for("the dock to end", ended)
            assert (summary["state"], summary["reason"]) == ("failed", f"msc:{device}: mount: {why}")
            assert [e["error"] for e in daemon.events("volume.refused") if e["block"] == device] == [why]
            assert not [e for e in daemon.events("volume.mounted") if e["block"] == device]
            assert call(daemon.control_socket, "status", {})["store"]  # the daemon goes on serving
        assert daemon.stop() == 0
        assert stored_digests(daemon, "ZFY6101") == []
    finally:
        daemon.close()
        unseal_tree(daemon.base)
