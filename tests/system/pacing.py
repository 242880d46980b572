"""Set the pace of a copy that a test needs in flight (progress, unplug or kill mid-copy).

The camera's card is a loop-device image read under the kernel's block throttle (the simulator's
`read-rate` fault), so a copy of N MiB at R KiB/s lasts at least N * 1024 / R seconds on any disk,
however fast; no test hopes the disk is slow.
"""

from __future__ import annotations

from typing import Any

import pytest

from drivers.simulator.throttle import unavailable
from tests.support.loopdev import require_root_tools

KIB_PER_S = 1024  # 1 MiB/s: a 4 MiB copy buffer is filled about every 4 s


def paced(kib_per_s: int = KIB_PER_S, faults: str = "") -> dict[str, Any]:
    """`make_camera` options for a card read at most `kib_per_s` KiB/s, with any other simulator
    `faults`; skips, saying why, where the host cannot throttle a block device."""
    require_root_tools("mkfs.ext4")
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    rate = f"read-rate={kib_per_s}"
    return {"image": True, "extra_args": ["--faults", f"{faults},{rate}" if faults else rate]}
