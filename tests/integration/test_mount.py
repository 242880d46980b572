"""mount_readonly on real loop-mounted images: read-only, nosuid/nodev/noexec, private, always undone."""

from __future__ import annotations

import errno
import os
import platform
import stat
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from drivers.base import MountError
from drivers.mount import block_device_present, disk_sequence, kernel_filesystems, mount_readonly
from drivers.simulator.volume import build_volume, make_image
from tests.support.loopdev import attached, require_root_tools
from tests.support.loopdev import make_image as make_empty_image

pytestmark = pytest.mark.root

START = datetime(2026, 11, 22, 0, 30, 15, tzinfo=UTC)
EXT4 = ("ext4",)  # the camera images here are ext4, which is never mounted unless allowed explicitly


@dataclass(frozen=True)
class MountEntry:
    options: frozenset[str]
    fstype: str
    source: str


def mount_entry(mount_point: Path) -> MountEntry | None:
    """The mount at exactly `mount_point` in this process's namespace, from /proc/self/mountinfo."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4].encode().decode("unicode_escape") == str(mount_point):
            after = fields.index("-")
            return MountEntry(frozenset(fields[5].split(",")), fields[after + 1], fields[after + 2])
    return None


def loop_devices_of(image: Path) -> str:
    return subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=True).stdout


def kernel_can_mount(fstype: str) -> bool:
    if fstype in kernel_filesystems():
        return True
    modules = Path("/lib/modules", platform.release())
    return modules.is_dir() and any(modules.rglob(f"{fstype}.ko*"))


def camera_image(tmp_path: Path, fstype: str = "ext4") -> Path:
    source = tmp_path / f"card-{fstype}"
    made = build_volume(
        source, device_serial="0000001", officer_name="张三", count=2, size_bytes=4096, start=START, seed=3
    )
    assert made[0].name == "ZFY0000001_20261122_083015_0001.MP4"
    return make_image(source, tmp_path / f"card.{fstype}", fstype=fstype)


def assert_mounted_safely(volume: Path, fstype: str) -> None:
    private = volume.parent
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    entry = mount_entry(volume)
    assert entry is not None
    assert entry.fstype == fstype
    assert {"ro", "nosuid", "nodev", "noexec"} <= entry.options
    names = sorted(path.name for path in (volume / "DCIM" / "100MEDIA").iterdir())
    assert len(names) == 2
    assert names[0] == "ZFY0000001_20261122_083015_0001.MP4"
    assert names[1].startswith("ZFY0000001_20261122_")
    assert names[1].endswith("_0002.MP4")
    with pytest.raises(OSError) as created:
        (volume / "new.txt").write_bytes(b"x")
    assert created.value.errno == errno.EROFS
    with pytest.raises(OSError) as opened:
        (volume / "DCIM" / "100MEDIA" / names[0]).open("r+b")
    assert opened.value.errno == errno.EROFS


def test_ext4_volume_is_read_only_private_and_removed_afterwards(tmp_path: Path) -> None:
    require_root_tools("mkfs.ext4", "blkid")
    image = camera_image(tmp_path)
    base = tmp_path / "mounts"
    base.mkdir()
    with attached(image) as device:
        with (
            capture_logs() as logs,
            mount_readonly(device, device_name="msc:test", fstypes=EXT4, base_dir=base) as volume,
        ):
            assert volume.parent.parent == base
            assert_mounted_safely(volume, "ext4")
        assert mount_entry(volume) is None
        assert list(base.iterdir()) == []
        assert [log["event"] for log in logs] == ["volume.mounted", "volume.unmounted"]
        assert logs[0]["device"] == "msc:test"
    assert loop_devices_of(image) == ""


def test_vfat_volume_is_read_only_private_and_removed_afterwards(tmp_path: Path) -> None:
    require_root_tools("mkfs.vfat", "blkid")
    if not kernel_can_mount("vfat"):
        pytest.skip("this kernel offers no vfat filesystem (not built in, no module)")
    image = camera_image(tmp_path, "vfat")
    base = tmp_path / "mounts"
    base.mkdir()
    with attached(image) as device:
        with mount_readonly(device, device_name="msc:test", base_dir=base) as volume:
            assert_mounted_safely(volume, "vfat")
        assert mount_entry(volume) is None
        assert list(base.iterdir()) == []
    assert loop_devices_of(image) == ""


def test_garbage_image_is_refused_unmounted_naming_the_device(tmp_path: Path) -> None:
    require_root_tools("blkid")
    image = tmp_path / "garbage.img"
    image.write_bytes(os.urandom(4 * 2**20))
    base = tmp_path / "mounts"
    base.mkdir()
    with attached(image) as device, capture_logs() as logs:
        with (
            pytest.raises(MountError) as caught,
            mount_readonly(device, device_name="msc:dock3", fstypes=("vfat", "exfat", "ext4"), base_dir=base),
        ):
            pytest.fail("a garbage image must not mount")
        assert caught.value.device == "msc:dock3"
        # Refused, not tried: the kernel never parses what blkid cannot name.
        assert str(caught.value) == f"msc:dock3: mount: {device}: no filesystem that blkid recognises"
        assert caught.value.exit_code == 28
        assert [log["event"] for log in logs] == ["volume.refused"]
        assert list(base.iterdir()) == []
    assert loop_devices_of(image) == ""


def test_ext4_is_not_mounted_unless_allowed_explicitly(tmp_path: Path) -> None:
    require_root_tools("mkfs.ext4", "blkid")
    image = camera_image(tmp_path)
    base = tmp_path / "mounts"
    base.mkdir()
    with attached(image) as device, capture_logs() as logs:
        with (
            pytest.raises(MountError) as caught,
            mount_readonly(device, device_name="msc:dock3", base_dir=base),
        ):
            pytest.fail("ext4 is not a default camera filesystem: the kernel would parse a hostile image")
        assert caught.value.exit_code == 28
        assert str(caught.value) == (
            f"msc:dock3: mount: {device}: filesystem 'ext4' is not allowed for this camera (allowed: vfat, "
            "exfat; a [[camera]] rule's filesystems can allow more)"
        )
        assert [log["event"] for log in logs] == ["volume.refused"]
        assert list(base.iterdir()) == []  # refused before a mount point was even made
        with mount_readonly(device, device_name="msc:dock3", fstypes=EXT4, base_dir=base) as volume:
            assert_mounted_safely(volume, "ext4")


def test_a_volume_with_signatures_of_two_filesystems_is_refused_even_if_both_are_allowed(
    tmp_path: Path,
) -> None:
    require_root_tools("mkfs.ext4", "mkfs.vfat", "blkid")
    polyglot = make_empty_image(tmp_path / "polyglot.img", 16)  # ext4: its superblock sits at 1 KiB
    boot_sector = make_empty_image(tmp_path / "fat.img", 16, fstype="vfat").read_bytes()[:512]
    with polyglot.open("r+b") as image:
        image.write(boot_sector)  # a FAT boot sector in front of it: which one would the kernel parse?
    base = tmp_path / "mounts"
    base.mkdir()
    with attached(polyglot) as device:
        refused = pytest.raises(MountError, match=r"signatures of more than one filesystem")
        with (
            refused as caught,
            mount_readonly(device, device_name="msc:t", fstypes=("vfat", "ext4"), base_dir=base),
        ):
            pytest.fail("an ambivalent volume must not be mounted as either")
        assert caught.value.exit_code == 28
        assert list(base.iterdir()) == []


def test_a_filesystem_outside_the_allowed_types_is_refused(tmp_path: Path) -> None:
    require_root_tools("mkfs.ext2", "blkid")
    image = make_empty_image(tmp_path / "ext2.img", 8, fstype="ext2")
    with attached(image) as device:
        refused = pytest.raises(
            MountError, match=r"filesystem 'ext2' is not allowed for this camera \(allowed: vfat"
        )
        with (
            refused,
            mount_readonly(
                device, device_name="msc:test", fstypes=("vfat", "exfat", "ext4"), base_dir=tmp_path
            ),
        ):
            pytest.fail("ext2 is not an allowed camera filesystem")
    ext4 = camera_image(tmp_path)
    only_vfat = pytest.raises(MountError, match=r"'ext4' is not allowed for this camera \(allowed: vfat;")
    with (
        attached(ext4) as ext4_device,  # outermost: the device outlives the failed mount
        only_vfat,
        mount_readonly(ext4_device, device_name="msc:test", fstypes=("vfat",), base_dir=tmp_path),
    ):
        pytest.fail("only vfat was allowed")


def test_missing_device_raises_mount_error(tmp_path: Path) -> None:
    require_root_tools()
    refused = pytest.raises(MountError, match=r"msc:gone: mount: /dev/ingestd-no-such-device: ")
    with refused, mount_readonly("/dev/ingestd-no-such-device", device_name="msc:gone", base_dir=tmp_path):
        pytest.fail("nothing to mount")
    assert list(tmp_path.iterdir()) == []


def test_busy_volume_is_unmounted_lazily(tmp_path: Path) -> None:
    require_root_tools("mkfs.ext4", "blkid")
    image = camera_image(tmp_path)
    base = tmp_path / "mounts"
    base.mkdir()
    with attached(image) as device, capture_logs() as logs:
        with mount_readonly(device, device_name="msc:busy", fstypes=EXT4, base_dir=base) as volume:
            recording = next((volume / "DCIM" / "100MEDIA").iterdir())
            held = recording.open("rb")  # keeps the filesystem busy past the block
        try:
            assert mount_entry(volume) is None
            assert list(base.iterdir()) == []
            assert len(held.read()) == 4096  # the open file still reads after the lazy detach
        finally:
            held.close()
        events = [log["event"] for log in logs]
        assert events == ["volume.mounted", "volume.unmount_busy", "volume.unmounted"]
    assert loop_devices_of(image) == ""


def test_an_exception_in_the_block_still_unmounts(tmp_path: Path) -> None:
    require_root_tools("mkfs.ext4", "blkid")
    image = camera_image(tmp_path)
    base = tmp_path / "mounts"
    base.mkdir()
    with attached(image) as device:
        failing = pytest.raises(RuntimeError, match="copy failed")
        with failing, mount_readonly(device, device_name="msc:test", fstypes=EXT4, base_dir=base) as volume:
            raise RuntimeError("copy failed")
        assert mount_entry(volume) is None
        assert list(base.iterdir()) == []


def test_a_detached_loop_device_is_no_longer_present(tmp_path: Path) -> None:
    require_root_tools("mkfs.ext4")
    image = make_empty_image(tmp_path / "camera.img", 8)
    with attached(image) as device:
        assert block_device_present(device)
    assert Path(device).exists()  # the node outlives the detach...
    assert not block_device_present(device)  # ...but the camera is gone
    assert not block_device_present(str(tmp_path / "no-such-node"))


def test_a_mount_of_another_disk_instance_than_the_one_that_docked_is_undone(tmp_path: Path) -> None:
    # The sequence is checked on the mounted filesystem's own device, after the mount: a node that came
    # to name another disk between the dock and the mount is unmounted, not read.
    require_root_tools("mkfs.ext4", "blkid")
    image = camera_image(tmp_path)
    base = tmp_path / "mounts"
    base.mkdir()
    with attached(image) as device:
        now = disk_sequence(device)
        assert now is not None
        with mount_readonly(device, device_name="msc:t", fstypes=EXT4, base_dir=base, diskseq=now) as volume:
            assert_mounted_safely(volume, "ext4")
        other = str(int(now) - 1)
        with (
            capture_logs() as logs,
            pytest.raises(MountError, match=f"disk instance {now}, not {other}, the one that docked"),
            mount_readonly(device, device_name="msc:t", fstypes=EXT4, base_dir=base, diskseq=other),
        ):
            pytest.fail("another disk instance was mounted")
        assert all(
            entry.split()[9] != device for entry in Path("/proc/self/mountinfo").read_text().splitlines()
        )
    assert list(base.iterdir()) == []
    assert [e["event"] for e in logs if e["event"].startswith("volume.")][-2:] == [
        "volume.mounted",
        "volume.not_the_docked_disk",
    ]
