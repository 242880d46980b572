"""Deleting proven recordings: only regular files inside the volume, read-only mounts back to read-only."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from drivers.base import MountError
from drivers.wipe import delete_recordings
from tests.support.loopdev import attached, make_image, mounted, require_root_tools


def mount_options(mount_point: Path) -> set[str]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mount_point):
            return set(fields[5].split(","))
    raise AssertionError(f"{mount_point} is not mounted")


def test_directory_volume_deletes_listed_regular_files_only(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    (volume / "DCIM").mkdir(parents=True)
    proven = volume / "DCIM" / "A.MP4"
    proven.write_bytes(b"a")
    kept = volume / "DCIM" / "B.MP4"
    kept.write_bytes(b"b")
    outside = tmp_path / "outside.txt"
    outside.write_text("must survive")
    (volume / "link").symlink_to(tmp_path)
    failures = delete_recordings(
        volume,
        [Path("DCIM/A.MP4"), Path("link/outside.txt"), Path("../outside.txt")],
        device_name="dir:test",
        remount=False,
    )
    assert not proven.exists()
    assert kept.exists()
    assert outside.read_text() == "must survive"
    assert [str(path) for path, _ in failures] == ["link/outside.txt", "../outside.txt"]


def test_read_only_mount_is_writable_only_during_deletion(tmp_path: Path) -> None:
    require_root_tools("mkfs.ext4")
    image = make_image(tmp_path / "camera.img", 16)
    with attached(image) as device:
        with mounted(device, tmp_path / "fill") as fill:
            (fill / "DCIM").mkdir()
            (fill / "DCIM" / "A.MP4").write_bytes(os.urandom(1024))
            (fill / "DCIM" / "B.MP4").write_bytes(os.urandom(1024))
        with mounted(device, tmp_path / "camera", "ro,nosuid,nodev,noexec") as volume:
            failures = delete_recordings(volume, [Path("DCIM/A.MP4")], device_name=device, remount=True)
            assert failures == []
            assert not (volume / "DCIM" / "A.MP4").exists()
            assert (volume / "DCIM" / "B.MP4").exists()
            assert "ro" in mount_options(volume)
            with pytest.raises(OSError, match="Read-only file system"):
                (volume / "new").write_bytes(b"x")


def test_remount_failure_is_a_mount_error_naming_the_device(tmp_path: Path) -> None:
    require_root_tools()
    not_a_mount = tmp_path / "plain"
    not_a_mount.mkdir()
    with pytest.raises(MountError, match=r"^loop9: remount rw: "):
        delete_recordings(not_a_mount, [Path("x")], device_name="loop9", remount=True)
    assert subprocess.run(["mountpoint", "-q", str(not_a_mount)], check=False).returncode != 0
