"""The caller's side of an export or copy: the new directory DEST that the daemon fills.

Guarantees: `ingestctl` checks and creates everything with the caller's own rights, in the caller's own
mount namespace (the daemon's sandbox cannot even see most of the file system), relative to a descriptor
of DEST's parent, so the checks and the rename concern one directory whatever its path leads to later.
DEST and DEST.partial must not exist and are never overwritten. The daemon gets only an open descriptor
of the new, empty DEST.partial. DEST appears (a rename that never replaces anything) only after the daemon
answered that the files are complete, proven and recorded; a refusal or failure removes the (then empty)
DEST.partial again.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ingestd.evidence.errors import EvidenceUsageError, ExportError

PARTIAL_SUFFIX = ".partial"
_RENAME_NOREPLACE = 1  # linux/fs.h
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
T = TypeVar("T")


def rename_noreplace(directory: int, old: str, new: str) -> None:
    """Rename `old` to `new` in the directory open as `directory`; FileExistsError if `new` exists (the
    check and the rename are one step, renameat2 RENAME_NOREPLACE: os.rename would replace an empty
    directory)."""
    libc = ctypes.CDLL(None, use_errno=True)  # the C library already loaded: find_library would run ldconfig
    done = libc.renameat2(directory, os.fsencode(old), directory, os.fsencode(new), _RENAME_NOREPLACE)
    if done != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), new)


def _exists(directory: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _make_partial(parent: int, dest: Path, partial_name: str) -> int | str:
    """DEST.partial, created 0700 in the directory open as `parent` and opened; else why not."""
    if _exists(parent, dest.name):
        return "already exists; nothing is ever overwritten"
    partial = dest.with_name(partial_name)
    if _exists(parent, partial_name):
        return f"{partial} exists (an interrupted attempt?); remove it first"
    try:
        os.mkdir(partial_name, 0o700, dir_fd=parent)
        return os.open(partial_name, _DIRECTORY, dir_fd=parent)
    except OSError as problem:
        return f"cannot create {partial}: {problem.strerror or problem}"


class Destination:
    """DEST's parent and the new DEST.partial in it, both held open."""

    def __init__(self, dest: Path, error: type[ExportError], parent: int, partial: int) -> None:
        self.dest = dest
        self.error = error
        self.parent = parent
        self.fd = partial  # what the daemon is handed
        self.partial_name = dest.name + PARTIAL_SUFFIX

    @classmethod
    def create(cls, dest: Path, error: type[ExportError] = ExportError) -> Destination:
        """Check DEST (absolute, new, and no DEST.partial left over) and create DEST.partial, mode 0700."""
        if not dest.is_absolute():
            raise EvidenceUsageError(detail=f"destination {dest} must be an absolute path")
        if not dest.name or dest.name in (".", ".."):
            raise EvidenceUsageError(detail=f"destination {dest} must name a new directory")
        partial_name = dest.name + PARTIAL_SUFFIX
        try:
            parent = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as problem:
            raise error(dest=dest, detail=f"parent directory: {problem.strerror or problem}") from None
        try:
            made = _make_partial(parent, dest, partial_name)
        except BaseException:
            os.close(parent)
            raise
        if isinstance(made, str):
            os.close(parent)
            raise error(dest=dest, detail=made)
        return cls(dest, error, parent, made)

    def _still_named(self) -> bool:
        try:
            named = os.stat(self.partial_name, dir_fd=self.parent, follow_symlinks=False)
        except OSError:
            return False
        held = os.fstat(self.fd)
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)

    def publish(self) -> None:
        """Rename the filled DEST.partial to DEST, durably, never over anything."""
        if not self._still_named():
            raise self.error(dest=self.dest, detail=f"{self.partial_name} was moved or replaced meanwhile")
        try:
            rename_noreplace(self.parent, self.partial_name, self.dest.name)
            os.fsync(self.parent)
        except OSError as problem:
            raise self.error(
                dest=self.dest,
                detail=f"rename failed: {problem.strerror or problem}; the files are complete in "
                f"{self.dest.with_name(self.partial_name)}",
            ) from None

    def abandon(self) -> None:
        """Remove DEST.partial if it is still ours and empty (the daemon empties it on failure)."""
        if self._still_named():
            with contextlib.suppress(OSError):  # not empty: left for the caller to look at
                os.rmdir(self.partial_name, dir_fd=self.parent)

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.parent)


def deliver_into(dest: Path, error: type[ExportError], send: Callable[[int], T]) -> T:
    """Create DEST.partial, `send` its descriptor to the daemon (which fills it and answers), then
    rename it to DEST; on any failure remove it again."""
    destination = Destination.create(dest, error)
    try:
        result = send(destination.fd)
        destination.publish()
    except BaseException:
        destination.abandon()
        raise
    finally:
        destination.close()
    return result
