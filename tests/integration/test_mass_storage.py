"""The mass-storage driver on a real loop-mounted camera image, matched through the registry."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drivers.base import DeviceInfo, DriverOptions, closing_camera
from drivers.mass_storage import MassStorageDriver
from drivers.registry import CameraRule, DriverRegistry
from drivers.scan import scan_volume
from drivers.simulator.volume import build_volume, make_image
from tests.support.loopdev import attached, require_root_tools

pytestmark = pytest.mark.root

START = datetime(2026, 11, 22, 0, 30, 15, tzinfo=UTC)


def mounted_at(path: Path) -> bool:
    return any(line.split()[4] == str(path) for line in Path("/proc/self/mountinfo").read_text().splitlines())


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
            # Before the session mounts the volume, identify and storage mount it just for the call.
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
