"""Deleting proven recordings: only regular files inside the volume that are still the file that was
read, read-only mounts back to read-only."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from drivers.base import DeletionOutcome, MountError, OriginalFile
from drivers.wipe import delete_recordings
from tests.support.loopdev import attached, make_image, mount_options, mounted, require_root_tools


def read(volume: Path, relative: str) -> OriginalFile:
    """The file as the session saw it when it read the bytes."""
    return OriginalFile.of(Path(relative), (volume / relative).stat())


def nowhere(relative: str) -> OriginalFile:
    return OriginalFile(Path(relative), 0, 0, 0, 0)


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
    outcomes = delete_recordings(
        volume,
        [read(volume, "DCIM/A.MP4"), nowhere("link/outside.txt"), nowhere("../outside.txt")],
        device_name="dir:test",
        remount=False,
    )
    assert not proven.exists()
    assert kept.exists()
    assert outside.read_text() == "must survive"
    assert [(str(d.file.path), d.outcome) for d in outcomes] == [
        ("DCIM/A.MP4", DeletionOutcome.DELETED),
        ("link/outside.txt", DeletionOutcome.REFUSED),
        ("../outside.txt", DeletionOutcome.REFUSED),
    ]


def test_a_file_that_is_not_the_one_read_is_refused(tmp_path: Path) -> None:
    """Replaced under the same name with the same size and mtime (another inode), or rewritten in place
    (another mtime): either way not the bytes that were proven, so it stays."""
    volume = tmp_path / "volume"
    (volume / "DCIM").mkdir(parents=True)
    for name in ("A.MP4", "B.MP4", "C.MP4"):
        (volume / "DCIM" / name).write_bytes(name.encode() * 1000)
    seen = [read(volume, f"DCIM/{name}") for name in ("A.MP4", "B.MP4", "C.MP4")]
    replacement = volume / "DCIM" / ".new"
    replacement.write_bytes(b"X" * 5000)
    os.utime(replacement, ns=(seen[0].mtime_ns, seen[0].mtime_ns))
    replacement.replace(volume / "DCIM" / "A.MP4")
    with (volume / "DCIM" / "B.MP4").open("r+b") as rewritten:
        rewritten.write(b"Y")
    outcomes = delete_recordings(volume, seen, device_name="dir:test", remount=False)
    assert [d.outcome for d in outcomes] == [
        DeletionOutcome.REFUSED,
        DeletionOutcome.REFUSED,
        DeletionOutcome.DELETED,
    ]
    reasons = [d.reason or "" for d in outcomes]
    assert reasons[0].startswith("not the file that was copied: inode")
    assert "mtime_ns" in reasons[1]
    assert (volume / "DCIM" / "A.MP4").read_bytes() == b"X" * 5000
    assert (volume / "DCIM" / "B.MP4").exists()
    assert not (volume / "DCIM" / "C.MP4").exists()


def test_read_only_mount_is_writable_only_during_deletion(tmp_path: Path) -> None:
    require_root_tools("mkfs.ext4")
    image = make_image(tmp_path / "camera.img", 16)
    with attached(image) as device:
        with mounted(device, tmp_path / "fill") as fill:
            (fill / "DCIM").mkdir()
            (fill / "DCIM" / "A.MP4").write_bytes(os.urandom(1024))
            (fill / "DCIM" / "B.MP4").write_bytes(os.urandom(1024))
        with mounted(device, tmp_path / "camera", "ro,nosuid,nodev,noexec") as volume:
            (outcome,) = delete_recordings(
                volume, [read(volume, "DCIM/A.MP4")], device_name=device, remount=True
            )
            assert outcome.outcome is DeletionOutcome.DELETED
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
        delete_recordings(not_a_mount, [nowhere("x")], device_name="loop9", remount=True)
    assert subprocess.run(["mountpoint", "-q", str(not_a_mount)], check=False).returncode != 0
