"""Durable writes: a file appears under its name only whole and on disk, and the name itself survives a
crash.

The model is borg's SaveFile: a temp file in the same directory (so the rename never crosses a
filesystem), write, fsync it, give it its name, fsync the directory. Any failure before the name is given
removes the temp file and leaves whatever held the name before untouched. Every helper here fsyncs the
directory it changed; a created or renamed name is not durable until that.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"  # temp files are `.<name>.<random>.tmp`: hidden, and recognisable after a crash


def fsync_dir(path: Path) -> None:
    """Make a directory's new entries durable: a created or renamed name is not, until this."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """mkdir -p whose new entries are durable: each parent that gained a child is fsynced."""
    if path.is_dir() or path.parent == path:
        return
    make_dirs(path.parent)
    with contextlib.suppress(FileExistsError):
        path.mkdir()
        fsync_dir(path.parent)


def temp_path(path: Path) -> Path:
    """A fresh temp name beside `path`; unique per call, so concurrent writers never share one."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}")


@contextlib.contextmanager
def durable_file(path: Path, *, mode: int = 0o600, overwrite: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes `path` when the block ends without error.

    The file has exactly `mode` from its creation (no umask race). With `overwrite`, an existing `path`
    is replaced atomically; without, an existing `path` is never replaced and FileExistsError is raised
    (atomically with a hard link; on a filesystem without hard links, by checking just before a rename).
    """
    temp = temp_path(path)

    def create(name: str, flags: int) -> int:
        return os.open(name, flags | os.O_EXCL | os.O_NOFOLLOW, mode)

    handle = open(temp, "wb", opener=create)  # noqa: SIM115 - closed by the `with` just below
    try:
        with handle:
            os.fchmod(handle.fileno(), mode)  # the umask can only have narrowed it; make it exact
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            temp.replace(path)
        else:
            _link_new(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _link_new(temp: Path, path: Path) -> None:
    """Give `temp` the name `path` unless `path` exists; `temp` is gone afterwards either way."""
    try:
        os.link(temp, path, follow_symlinks=False)  # fails atomically if `path` exists
    except FileExistsError:
        raise
    except OSError:  # no hard links on this filesystem (FAT): check, then rename
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        temp.replace(path)
        return
    temp.unlink()


def write_durably(path: Path, data: bytes, *, mode: int = 0o600, overwrite: bool = True) -> None:
    """Write `data` as the whole of `path`, durably (see `durable_file`)."""
    with durable_file(path, mode=mode, overwrite=overwrite) as handle:
        handle.write(data)
