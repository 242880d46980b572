"""Helpers for object-store tests: sources that fail like a camera does, and unsealing before cleanup."""

from __future__ import annotations

import errno
import io
import shutil
import subprocess
from pathlib import Path


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
    """Clear the immutable attribute below `path`, so pytest can delete what a test stored there."""
    if path.exists() and shutil.which("chattr") is not None:
        subprocess.run(["chattr", "-R", "-f", "-i", str(path)], check=False, capture_output=True)
