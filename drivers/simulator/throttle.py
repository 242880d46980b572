"""Hold a simulated camera's card, served on a loop device, to a read rate, as a slow card or link does.

The kernel's block throttle does it (cgroup v1 `blkio`, root group): every read of the device by a
process in that group, the daemon's included, is held to the rate in the block layer, below the
filesystem and above the image; the bytes are untouched. Only the named device is affected, and its
rule is cleared on exit. Tests that need a copy in flight set its pace this way instead of hoping the
disk is slow.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

READ_BPS: Final = Path("/sys/fs/cgroup/blkio/blkio.throttle.read_bps_device")


def _blkio_group() -> str | None:
    try:
        lines = Path("/proc/self/cgroup").read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    for line in lines:
        _hierarchy, controllers, path = line.split(":", 2)
        if "blkio" in controllers.split(","):
            return path
    return None


def unavailable() -> str | None:
    """Why reads cannot be throttled here, or None when they can."""
    if not READ_BPS.exists():
        return f"no block read throttle: {READ_BPS} is missing (needs cgroup v1 blkio)"
    if os.geteuid() != 0:
        return "the block read throttle needs root"
    group = _blkio_group()
    if group != "/":
        return f"this process is in blkio group {group!r}: the root group's throttle would not reach it"
    return None


def _set(device: str, bytes_per_s: int) -> None:
    number = Path(device).stat().st_rdev
    with READ_BPS.open("w", encoding="ascii") as rule:  # one rule per write; 0 removes it
        rule.write(f"{os.major(number)}:{os.minor(number)} {bytes_per_s}\n")


@contextlib.contextmanager
def read_rate(device: str, bytes_per_s: int) -> Iterator[None]:
    """Throttle reads of block `device` to `bytes_per_s` while the block runs; OSError if refused."""
    _set(device, bytes_per_s)
    try:
        yield
    finally:
        _set(device, 0)
