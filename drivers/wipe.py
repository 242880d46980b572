"""Deleting proven recordings from a camera volume (regulation 004 art. 19(四): clear the card only after
the footage is copied to dedicated storage).

The caller guarantees each file was proven (re-read, its BLAKE3 matched, catalog commit durable). This
module guarantees it unlinks only regular files inside the volume, never through a symlinked directory,
only while the name still holds the file that was read (same device, inode, size and mtime, checked
right before the unlink), and that a read-only mount is writable only for the duration of the deletion.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import structlog

from drivers.base import Deletion, DeletionOutcome, MountError, OriginalFile

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
    log.info("volume.remounted", device=device_name, mode=mode)


class _Refused(Exception):  # noqa: N818 - a decision, not a failure
    pass


def _unlink_inside(volume_fd: int, original: OriginalFile) -> None:
    """Unlink `original` walking from the volume root by directory fds with O_NOFOLLOW at every step,
    and only if the name still holds the file that was read (device, inode, size, mtime)."""
    relative = original.path
    parts = relative.parts
    if not parts or relative.is_absolute() or any(part in ("..", ".", "") for part in parts):
        raise _Refused(f"path outside the volume: {relative}")
    fds: list[int] = []
    parent = volume_fd
    try:
        for part in parts[:-1]:
            try:
                parent = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent
                )
            except OSError as error:
                raise _Refused(f"{part}: {error.strerror or error}") from None
            fds.append(parent)
        info = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode):
            raise _Refused("not a regular file")
        changed = original.differs_from(info)
        if changed is not None:
            raise _Refused(f"not the file that was copied: {changed}")
        os.unlink(parts[-1], dir_fd=parent)
        os.fsync(parent)
    finally:
        for fd in fds:
            os.close(fd)


def delete_recordings(
    volume: Path, files: list[OriginalFile], *, device_name: str, remount: bool
) -> list[Deletion]:
    """Unlink each file that is still the one that was read; one outcome per file, in order."""
    outcomes: list[Deletion] = []
    guard = writable(volume, device_name=device_name) if remount else contextlib.nullcontext()
    with guard:
        volume_fd = os.open(volume, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for original in files:
                try:
                    _unlink_inside(volume_fd, original)
                except _Refused as refused:
                    outcomes.append(Deletion(original, DeletionOutcome.REFUSED, str(refused)))
                except OSError as error:
                    outcomes.append(Deletion(original, DeletionOutcome.FAILED, error.strerror or str(error)))
                else:
                    outcomes.append(Deletion(original, DeletionOutcome.DELETED))
            os.fsync(volume_fd)
        finally:
            os.close(volume_fd)
    log.info(
        "originals_deleted",
        device=device_name,
        deleted=sum(d.outcome is DeletionOutcome.DELETED for d in outcomes),
        refused=sum(d.outcome is DeletionOutcome.REFUSED for d in outcomes),
        failed=sum(d.outcome is DeletionOutcome.FAILED for d in outcomes),
    )
    return outcomes
