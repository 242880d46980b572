"""Helpers for object-store tests: sources that fail like a camera does, and unsealing before cleanup."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

FIBMAP = 1  # ioctl: logical block -> physical block


class UnpluggedCamera(io.RawIOBase):
    """A source that serves `data` and then fails with EIO after `fail_after` bytes, as an unplugged
    camera's block device does."""

    def __init__(self, data: bytes, fail_after: int) -> None:
        super().__init__()
        self._data = memoryview(data)
        self._fail_after = fail_after
        self._position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]  # typeshed: Buffer
        if self._position >= self._fail_after:
            raise OSError(errno.EIO, "camera unplugged")
        count = min(len(buffer), self._fail_after - self._position, len(self._data) - self._position)
        buffer[:count] = self._data[self._position : self._position + count]
        self._position += count
        return count


def unseal_tree(path: Path) -> None:
    """Clear the immutable and append-only attributes below `path` (stored objects, the checkpoint
    file), so pytest can delete what a test left there."""
    if path.exists() and shutil.which("chattr") is not None:
        subprocess.run(["chattr", "-R", "-f", "-i", "-a", str(path)], check=False, capture_output=True)


def physical_offset(path: Path) -> int:
    """Byte offset of the file's first block on the device underneath it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        block: int = struct.unpack("i", fcntl.ioctl(fd, FIBMAP, struct.pack("i", 0)))[0]
    finally:
        os.close(fd)
    assert block > 0
    return block * os.statvfs(path).f_bsize


def rot_below_filesystem(image: Path, byte_offset: int = 1000) -> Callable[[Path], None]:
    """A bad disk, for real: flip one byte of a just-synced file in the loop device's backing image,
    underneath ext4, so only a re-read from the medium can see it. For `FileObjectStore(on_synced=...)`."""

    def rot(partial: Path) -> None:
        with image.open("r+b") as medium:
            medium.seek(physical_offset(partial) + byte_offset)
            byte = medium.read(1)
            medium.seek(-1, os.SEEK_CUR)
            medium.write(bytes([byte[0] ^ 0x01]))
            medium.flush()
            os.fsync(medium.fileno())

    return rot
