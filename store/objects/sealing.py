"""The inode flags that seal a file: FS_IOC_GETFLAGS / FS_IOC_SETFLAGS, the immutable bit of a stored
object and the append-only bit of the audit checkpoint file.

Guarantees: the request numbers are the kernel's own on 32- and 64-bit builds, and a filesystem or a
process that cannot hold the attribute is told apart (`NO_ATTRIBUTE_ERRNOS`) from a real I/O error.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import struct
from pathlib import Path
from typing import Final

FS_IMMUTABLE_FL: Final = 0x10
FS_APPEND_FL: Final = 0x20  # the audit checkpoint file's seal: writes may only append
SEALED_MODE: Final = 0o444  # every stored object, with or without the immutable attribute


def _ioc(direction: int, kind: str, number: int, size: int) -> int:
    """The kernel's _IOC() encoding, so the request numbers are right on 32- and 64-bit builds."""
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | number


# Declared with `long` in <linux/fs.h>, although the kernel copies an int.
FS_IOC_GETFLAGS: Final = _ioc(2, "f", 1, struct.calcsize("l"))
FS_IOC_SETFLAGS: Final = _ioc(1, "f", 2, struct.calcsize("l"))

# The filesystem cannot hold the attribute, or we lack CAP_LINUX_IMMUTABLE: fall back to 0444 only.
NO_ATTRIBUTE_ERRNOS: Final = frozenset({errno.EPERM, errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL})


def get_inode_flags(fd: int) -> int:
    flags = array.array("i", [0])
    fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
    return flags[0]


def set_inode_flags(fd: int, flags: int) -> None:
    fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags))


def is_immutable(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return bool(get_inode_flags(fd) & FS_IMMUTABLE_FL)
    except OSError as error:
        if error.errno in NO_ATTRIBUTE_ERRNOS:
            return False
        raise
    finally:
        os.close(fd)
