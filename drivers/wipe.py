"""Deleting proven recordings from a camera volume (regulation 004 art. 19(四): clear the card only after
the footage is copied to dedicated storage).

The caller guarantees each file was proven (re-read, both digests matched, catalog commit durable). This
module guarantees it unlinks only regular files inside the volume, never through a symlinked directory,
and that a read-only mount is writable only for the duration of the deletion.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import structlog

from drivers.base import MountError

log = structlog.get_logger()


@contextlib.contextmanager
def writable(mount_point: Path, *, device_name: str) -> Iterator[None]:
    """Remount a read-only camera mount read-write, and back to read-only however the block exits."""
    _remount(mount_point, "rw", device_name)
    try:
        yield
    finally:
        _remount(mount_point, "ro", device_name)


def _remount(mount_point: Path, mode: str, device_name: str) -> None:
    options = f"remount,{mode},nosuid,nodev,noexec"
    done = subprocess.run(
        ["mount", "-o", options, str(mount_point)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise MountError(device_name, f"remount {mode}", done.stderr.strip() or f"exit {done.returncode}")


def _unlink_inside(volume_fd: int, relative: Path) -> None:
    """Unlink `relative` walking from the volume root by directory fds with O_NOFOLLOW at every step."""
    parts = relative.parts
    if not parts or relative.is_absolute() or any(part in ("..", ".", "") for part in parts):
        raise OSError(f"refusing path outside the volume: {relative}")
    fds: list[int] = []
    parent = volume_fd
    try:
        for part in parts[:-1]:
            parent = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            fds.append(parent)
        info = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"not a regular file: {relative}")
        os.unlink(parts[-1], dir_fd=parent)
        os.fsync(parent)
    finally:
        for fd in fds:
            os.close(fd)


def delete_recordings(
    volume: Path, relative_paths: list[Path], *, device_name: str, remount: bool
) -> list[tuple[Path, str]]:
    """Unlink each file; returns (path, reason) for every one that could not be deleted."""
    failures: list[tuple[Path, str]] = []
    guard = writable(volume, device_name=device_name) if remount else contextlib.nullcontext()
    with guard:
        volume_fd = os.open(volume, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for relative in relative_paths:
                try:
                    _unlink_inside(volume_fd, relative)
                except OSError as error:
                    failures.append((relative, error.strerror or str(error)))
            os.fsync(volume_fd)
        finally:
            os.close(volume_fd)
    log.info(
        "originals_deleted",
        device=device_name,
        deleted=len(relative_paths) - len(failures),
        failed=len(failures),
    )
    return failures
