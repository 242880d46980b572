"""Overdue cameras: checked out longer than the window without docking, so their footage is at risk.

Cameras go out in the morning and come back at the end of the day (000 art. 10); a camera not docked
within the upload window holds footage that cannot meet its deadline. One flag per check-out: the key
names the camera and the check-out instant, so a job re-run, or a longer absence, flags nothing twice.
Exactly `window` after the check-out is not yet overdue.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ingestd.policies.flags import FlagDecision
from store.kinds import FlagKind
from store.times import iso, utc


@dataclass(frozen=True, slots=True)
class CameraCustodyFacts:
    """A camera's custody state as the catalog holds it (`checked_out_at` is None while checked in)."""

    camera_serial: str
    checked_out_at: datetime | None
    last_docked_at: datetime | None = None
    holder_officer_no: str | None = None
    camera_id: int | None = None


def evaluate_overdue(
    cameras: Iterable[CameraCustodyFacts], window: timedelta, now: datetime
) -> list[FlagDecision]:
    """One OVERDUE flag per camera out for longer than `window`, in serial order."""
    if window <= timedelta(0):
        raise ValueError(f"overdue window must be positive, got {window}")
    at = utc(now, "now")
    decisions: list[FlagDecision] = []
    for camera in sorted(cameras, key=lambda c: c.camera_serial):
        if camera.checked_out_at is None:
            continue
        out_since = utc(camera.checked_out_at, "checked_out_at")
        # A dock after the check-out means it came back even if the check-in was not written yet.
        if camera.last_docked_at is not None and utc(camera.last_docked_at, "last_docked_at") >= out_since:
            continue
        due = out_since + window
        if at <= due:
            continue
        decisions.append(
            FlagDecision(
                kind=FlagKind.OVERDUE,
                dedup_key=f"overdue:{camera.camera_serial}:{iso(out_since)}",
                raised_at=at,
                camera_serial=camera.camera_serial,
                camera_id=camera.camera_id,
                details={
                    "checked_out_at": iso(out_since),
                    "due_at": iso(due),
                    "holder_officer_no": camera.holder_officer_no,
                },
            )
        )
    return decisions
