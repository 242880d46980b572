"""Camera clock drift: correcting recorded times and flagging a camera whose clock wanders too far.

The offset is measured at the dock as camera clock minus station clock (NTP-style midpoint), before
the camera clock is set. A time the camera wrote is therefore `raw - offset` in station time. The raw
value is kept beside the corrected one by the catalog; these functions only compute.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from ingestd.policies.flags import FlagDecision
from store.kinds import FlagKind
from store.times import iso, utc


def corrected_recorded_at(raw: datetime, offset_s: float | None) -> datetime:
    """`raw` in station time. No measurement (None) leaves the time as the camera wrote it."""
    value = utc(raw, "raw")
    if offset_s is None:
        return value
    if not math.isfinite(offset_s):
        raise ValueError(f"clock offset must be finite, got {offset_s}")
    return value - timedelta(seconds=offset_s)


def evaluate_drift(
    camera_serial: str,
    offset_s: float | None,
    bound_s: float,
    *,
    measured_at: datetime,
    now: datetime,
    camera_id: int | None = None,
) -> FlagDecision | None:
    """A DRIFT flag when |offset| exceeds the bound (equal is within it), one per measurement."""
    if not bound_s > 0:
        raise ValueError(f"drift bound must be positive, got {bound_s}")
    if offset_s is None:
        return None
    if not math.isfinite(offset_s):
        raise ValueError(f"clock offset must be finite, got {offset_s}")
    if abs(offset_s) <= bound_s:
        return None
    return FlagDecision(
        kind=FlagKind.DRIFT,
        dedup_key=f"drift:{camera_serial}:{iso(measured_at)}",
        raised_at=utc(now, "now"),
        camera_serial=camera_serial,
        camera_id=camera_id,
        details={"offset_s": offset_s, "bound_s": bound_s, "measured_at": iso(measured_at)},
    )
