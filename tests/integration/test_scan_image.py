"""The scanner on a hostile camera volume loop-mounted read-only, and on a medium with a read error."""

from __future__ import annotations

import errno
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drivers.mount import mount_readonly
from drivers.mp4 import write_mp4
from drivers.scan import scan_volume
from drivers.simulator import volume as sim
from tests.support.loopdev import attached, image_with_unreadable_file, require_root_tools

EXT4 = ("ext4",)  # the test images are ext4, which a rule must allow explicitly

pytestmark = pytest.mark.root

START = datetime(2026, 11, 22, 0, 30, 15, tzinfo=UTC)


def test_hostile_volume_on_a_mounted_image(tmp_path: Path) -> None:
    require_root_tools("mkfs.ext4", "blkid")
    source = tmp_path / "card"
    made = sim.build_volume(
        source,
        device_serial="0000001",
        officer_name="张三",
        count=3,
        size_bytes=4096,
        start=START,
        seed=5,
        hostile=True,
    )
    from_directory = scan_volume(source)
    image = sim.make_image(source, tmp_path / "card.img")
    outside = Path(sim.OUTSIDE_FILE).read_bytes()[:64]
    with attached(image) as device, mount_readonly(device, device_name="msc:test", fstypes=EXT4) as volume:
        result = scan_volume(volume)
        # Same listing as the plain directory: names, sizes and dates survive the image.
        assert [(r.name, r.size, r.recorded_at, r.recorded_at_source) for r in result.recordings] == [
            (r.name, r.size, r.recorded_at, r.recorded_at_source) for r in from_directory.recordings
        ]
        assert result.rejected == from_directory.rejected
        assert len(result.recordings) == len(made)
        volume_prefix = os.fsencode(volume) + b"/"
        for recording in result.recordings:
            assert recording.raw_path.startswith(volume_prefix)
            fd = recording.open_fd()
            try:
                assert os.read(fd, 64) != outside
            finally:
                os.close(fd)
        rejected = dict(result.rejected)
        for link in (sim.HOSTILE_LINK_FILE, sim.HOSTILE_LINK_DIR, sim.HOSTILE_LINK_RELATIVE):
            assert rejected[link.decode()].startswith("symbolic link to ")
        for special in (sim.HOSTILE_FIFO, sim.HOSTILE_SOCKET, sim.HOSTILE_DEVICE):
            assert rejected[special.decode()].startswith("not a regular file (")
        assert not any(path.startswith("DCIM/etc/") for path in rejected)


def test_a_read_error_on_the_medium_is_reported_not_raised(tmp_path: Path) -> None:
    """A real kernel EIO: the file's indirect block points outside the filesystem.

    Root reads through chmod 000 and device-mapper may be missing, so the medium itself is damaged:
    the file opens and its first blocks read, but its tail (where the moov box is) cannot be read.
    """
    require_root_tools("mkfs.ext4", "debugfs", "blkid")
    source = tmp_path / "card"
    source.mkdir()
    write_mp4(source / "BAD.MP4", created_at=START, payload_size=60_000, duration_s=60)
    write_mp4(source / "GOOD.MP4", created_at=START, payload_size=1000, duration_s=60)
    image = image_with_unreadable_file(source, tmp_path / "card.img", "BAD.MP4")
    with attached(image) as device, mount_readonly(device, device_name="msc:test", fstypes=EXT4) as volume:
        result = scan_volume(volume)
        assert [recording.name for recording in result.recordings] == ["GOOD.MP4"]
        assert result.recordings[0].recorded_at_source == "mvhd"
        reason = dict(result.rejected)["BAD.MP4"]
        assert reason.startswith("read failed: ")
        assert errno.errorcode[errno.EIO] in reason or errno.errorcode[errno.EUCLEAN] in reason
