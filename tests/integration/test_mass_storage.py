"""The mass-storage driver on a real loop-mounted camera image, matched through the registry."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from drivers.base import DeviceInfo, DriverOptions, closing_camera
from drivers.mass_storage import MassStorageDriver
from drivers.mount import disk_sequence
from drivers.registry import CameraRule, DriverRegistry
from drivers.scan import scan_volume
from drivers.simulator.volume import build_volume, make_image
from ingestd.progress import DockProgress
from ingestd.services import Services
from ingestd.session import IngestSettings, SessionSummary, run_session
from store.models import Recording, SessionState
from store.types import utcnow
from tests.support.loopdev import attached, require_root_tools
from tests.support.station import open_station

pytestmark = pytest.mark.root

START = datetime(2026, 11, 22, 0, 30, 15, tzinfo=UTC)


def mountinfo() -> list[str]:
    return Path("/proc/self/mountinfo").read_text().splitlines()


def mounted_at(path: Path) -> bool:
    return any(line.split()[4] == str(path) for line in mountinfo())


def test_block_device_camera_from_dock_to_scan(tmp_path: Path) -> None:
    require_root_tools("mkfs.ext4", "blkid")
    source = tmp_path / "card"
    made = build_volume(
        source, device_serial="0000003", officer_name="赵六", count=3, size_bytes=10_000, start=START, seed=9
    )
    image = make_image(source, tmp_path / "card.img")
    registry = DriverRegistry(
        [
            CameraRule(
                match={"SUBSYSTEM": "block", "ID_FS_LABEL": "CAM*"},
                driver="mass-storage",
                options=DriverOptions(filesystems=("ext4",)),  # the test image is ext4: allowed explicitly
            )
        ]
    )
    with attached(image) as device:
        docked = DeviceInfo(
            port="1-1.4",
            properties={"SUBSYSTEM": "block", "ID_FS_LABEL": "CAMERA", "DEVNAME": device},
            block=device,
        )
        matched = registry.match(docked)
        assert matched is not None
        driver, options = matched
        assert isinstance(driver, MassStorageDriver)
        with closing_camera(driver.open(docked, options)) as camera:
            assert camera.name == f"msc:{device}"
            # identify mounts the volume and holds it: storage and the session's block use that mount.
            assert camera.identify().device_serial == "0000003"
            assert camera.identify().officer_name == "赵六"
            total = camera.storage().total_bytes
            assert 14 * 2**20 < total <= 16 * 2**20
            with camera.mounted_volume() as volume:
                assert mounted_at(volume)
                assert camera.identify().source == "identity-file"  # from the open mount, no second mount
                free = camera.storage().free_bytes
                usage = os.statvfs(volume)
                assert free == usage.f_bavail * usage.f_frsize
                result = scan_volume(volume, extensions=options.extensions)
                assert [recording.name for recording in result.recordings] == [
                    str(path.relative_to(source)) for path in made
                ]
            assert not mounted_at(volume)
            assert not volume.parent.exists()


def ingest_docked(services: Services, docked: DeviceInfo) -> SessionSummary:
    """One session of the mass-storage driver on `docked` (an ext4 image), deleting what it proved."""
    options = DriverOptions(filesystems=("ext4",))
    return run_session(
        services,
        MassStorageDriver().open(docked, options),
        device=docked,
        driver_name="mass-storage",
        options=options,
        settings=IngestSettings(delete_after_ingest=True),
        clock=utcnow,
        progress=DockProgress(),
        unplugged=threading.Event(),
        stopping=threading.Event(),
    )


def test_a_docked_node_that_names_another_disk_instance_by_the_mount_is_not_ingested(
    tmp_path: Path,
) -> None:
    # The dock's uevent announced another disk instance (DISKSEQ) than the one its node names when it is
    # mounted: whatever is there is not the camera's volume; nothing is read, stored or deleted.
    require_root_tools("mkfs.ext4", "blkid")
    source = tmp_path / "card"
    build_volume(
        source, device_serial="0000005", officer_name="孙八", count=2, size_bytes=10_000, start=START, seed=5
    )
    image = make_image(source, tmp_path / "card.img")
    with open_station(tmp_path / "station") as services, attached(image) as device:
        now = disk_sequence(device)
        assert now is not None
        properties = {"ID_SERIAL_SHORT": "0000005", "DISKSEQ": str(int(now) - 1)}
        summary = ingest_docked(services, DeviceInfo(port="1-1.6", properties=properties, block=device))
        assert not any(line.split()[9] == device for line in mountinfo())
        with services.catalog.transaction() as db:
            assert db.scalars(select(Recording.id)).all() == []
    assert summary.state is SessionState.FAILED
    assert summary.reason is not None
    assert "not " + str(int(now) - 1) + ", the one that docked" in summary.reason
    assert summary.files == 0


def test_a_session_mounts_the_volume_once_and_remounts_it_only_to_delete(tmp_path: Path) -> None:
    require_root_tools("mkfs.ext4", "blkid")
    source = tmp_path / "card"
    build_volume(
        source, device_serial="0000004", officer_name="钱七", count=2, size_bytes=50_000, start=START, seed=4
    )
    image = make_image(source, tmp_path / "card.img")
    with open_station(tmp_path / "station") as services, attached(image) as device, capture_logs() as logs:
        docked = DeviceInfo(port="1-1.5", properties={"ID_SERIAL_SHORT": "0000004"}, block=device)
        summary = ingest_docked(services, docked)
        assert not any(line.split()[9] == device for line in mountinfo())  # unmounted at the end
    assert summary.state is SessionState.DONE
    assert summary.files == 2
    events = [(entry["event"], entry.get("mode")) for entry in logs if entry["event"].startswith("volume.")]
    # identify, storage, scan, copy and the deletion all use the one read-only mount; only the
    # deletion makes it writable, and it goes back to read-only before the unmount.
    assert events == [
        ("volume.mounted", None),
        ("volume.remounted", "rw"),
        ("volume.remounted", "ro"),
        ("volume.unmounted", None),
    ]
