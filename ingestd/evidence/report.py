"""Statistics per unit and officer over a period (001 art. 28; 003 art. 26).

Guarantees: every figure comes from SQL aggregates. Each source (recordings, gap flags, overdue flags,
cameras, clock readings) is read once, grouped by (unit, officer) in SQL; the per-unit, per-officer and
total rows are then summed over those few groups, never over recordings. The recordings pass is covered
by `ix_recordings_report` (SQLite skip-scans it) or `ix_recordings_period` (PostgreSQL), the flags pass
by `ix_flags_kind_recording`, the drift by `ix_clock_readings_time`, so the cost grows with the period's
rows and reads no table rows of the recordings.

Definitions: recordings count by their corrected `recorded_at`; a recording is late when it was ingested
after its deadline; hours come from recordings whose duration is known (`hours_known_for` says how
many); gaps and interruptions are the flags raised on the period's recordings; overdue flags count by
when they were raised, against the camera's unit and the officer who held it; device health is the
cameras' last reported battery and the clock offsets measured in the period, by the camera's unit and
its assigned officer.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from ingestd.evidence.periods import Period
from store.models import Camera, ClockReading, Flag, FlagKind, Officer, Recording, Unit

LOW_BATTERY_PERCENT = 20


class GroupBy(enum.StrEnum):
    UNIT = "unit"
    OFFICER = "officer"


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


@dataclass
class _Sums:
    """Additive partial aggregates of one (unit, officer) group; averages are derived at the end."""

    recordings: int = 0
    bytes: int = 0
    seconds: float = 0.0
    known: int = 0
    late: int = 0
    gaps: int = 0
    interrupted: int = 0
    overdue: int = 0
    cameras: int = 0
    battery_sum: float = 0.0
    battery_count: int = 0
    battery_min: int | None = None
    low_battery: int = 0
    drift_count: int = 0
    drift_sum: float = 0.0
    drift_max: float | None = None

    def add(self, other: _Sums) -> None:
        for name in (
            "recordings",
            "bytes",
            "seconds",
            "known",
            "late",
            "gaps",
            "interrupted",
            "overdue",
            "cameras",
            "battery_sum",
            "battery_count",
            "low_battery",
            "drift_count",
            "drift_sum",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.battery_min = _least(self.battery_min, other.battery_min)
        self.drift_max = _most(self.drift_max, other.drift_max)

    def figures(self) -> dict[str, Any]:
        return {
            "recordings": self.recordings,
            "bytes": self.bytes,
            "hours": round(self.seconds / 3600, 3),
            "hours_known_for": self.known,
            "late": self.late,
            "late_pct": round(100 * self.late / self.recordings, 2) if self.recordings else 0.0,
            "gaps": self.gaps,
            "interrupted": self.interrupted,
            "overdue": self.overdue,
            "cameras": self.cameras,
            "battery_avg_pct": (
                round(self.battery_sum / self.battery_count, 1) if self.battery_count else None
            ),
            "battery_min_pct": self.battery_min,
            "low_battery_cameras": self.low_battery,
            "drift_readings": self.drift_count,
            "drift_avg_abs_s": round(self.drift_sum / self.drift_count, 3) if self.drift_count else None,
            "drift_max_abs_s": round(self.drift_max, 3) if self.drift_max is not None else None,
        }


def _least(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _most(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


Key = tuple[int | None, int | None]  # (unit id, officer id)


def _groups(db: Session, period: Period, unit_id: int | None) -> dict[Key, _Sums]:
    """One grouped query per source, merged into partial sums per (unit, officer)."""
    groups: dict[Key, _Sums] = defaultdict(_Sums)
    in_period = (Recording.recorded_at >= period.start, Recording.recorded_at < period.end)
    rec_unit = (Recording.unit_id == unit_id,) if unit_id is not None else ()
    cam_unit = (Camera.unit_id == unit_id,) if unit_id is not None else ()

    # Grouped in ix_recordings_report's order, and covered by it.
    for unit, officer, count, size, seconds, known, late in db.execute(
        select(
            Recording.unit_id,
            Recording.officer_id,
            func.count(Recording.recorded_at),
            func.coalesce(func.sum(Recording.size), 0),
            func.coalesce(func.sum(Recording.duration_s), 0.0),
            func.count(Recording.duration_s),
            _count_if(Recording.ingested_at > Recording.deadline_at),
        )
        .where(*in_period, *rec_unit)
        .group_by(Recording.unit_id, Recording.officer_id)
    ):
        g = groups[(unit, officer)]
        g.recordings, g.bytes, g.seconds, g.known, g.late = (
            int(count),
            int(size),
            float(seconds),
            int(known),
            int(late),
        )

    for unit, officer, gaps, interrupted in db.execute(
        select(
            Recording.unit_id,
            Recording.officer_id,
            _count_if(Flag.kind == FlagKind.GAP),
            _count_if(Flag.kind == FlagKind.INTERRUPTED),
        )
        .join(Recording, Recording.id == Flag.recording_id)
        .where(Flag.kind.in_([FlagKind.GAP, FlagKind.INTERRUPTED]), *in_period, *rec_unit)
        .group_by(Recording.unit_id, Recording.officer_id)
    ):
        groups[(unit, officer)].gaps += int(gaps)
        groups[(unit, officer)].interrupted += int(interrupted)

    holder = Flag.details["holder_officer_no"].as_string()
    for unit, officer, count in db.execute(
        select(Camera.unit_id, Officer.id, func.count(Flag.id))
        .join(Camera, Camera.id == Flag.camera_id)
        .outerjoin(Officer, Officer.officer_no == holder)
        .where(
            Flag.kind == FlagKind.OVERDUE,
            Flag.raised_at >= period.start,
            Flag.raised_at < period.end,
            *cam_unit,
        )
        .group_by(Camera.unit_id, Officer.id)
    ):
        groups[(unit, officer)].overdue += int(count)

    for unit, officer, cams, total, counted, least, low in db.execute(
        select(
            Camera.unit_id,
            Camera.assigned_officer_id,
            func.count(Camera.id),
            func.sum(Camera.battery_percent),
            func.count(Camera.battery_percent),
            func.min(Camera.battery_percent),
            _count_if(Camera.battery_percent < LOW_BATTERY_PERCENT),
        )
        .where(*cam_unit)
        .group_by(Camera.unit_id, Camera.assigned_officer_id)
    ):
        g = groups[(unit, officer)]
        g.cameras, g.battery_sum, g.battery_count = int(cams), float(total or 0), int(counted)
        g.battery_min, g.low_battery = (int(least) if least is not None else None), int(low)

    offset = func.abs(ClockReading.offset_s)
    for unit, officer, count, total, most in db.execute(
        select(
            Camera.unit_id,
            Camera.assigned_officer_id,
            func.count(ClockReading.offset_s),
            func.sum(offset),
            func.max(offset),
        )
        .join(Camera, Camera.id == ClockReading.camera_id)
        .where(ClockReading.measured_at >= period.start, ClockReading.measured_at < period.end, *cam_unit)
        .group_by(Camera.unit_id, Camera.assigned_officer_id)
    ):
        g = groups[(unit, officer)]
        g.drift_count, g.drift_sum = int(count), float(total or 0)
        g.drift_max = float(most) if most is not None else None
    return groups


def _roll_up(groups: dict[Key, _Sums], key: Callable[[Key], int | None]) -> dict[int | None, _Sums]:
    rolled: dict[int | None, _Sums] = defaultdict(_Sums)
    for group, sums in groups.items():
        rolled[key(group)].add(sums)
    return rolled


def _labels(db: Session, by: GroupBy, ids: Iterable[int | None]) -> dict[int | None, dict[str, Any]]:
    wanted = [i for i in ids if i is not None]
    if by is GroupBy.UNIT:
        return {
            u.id: {"unit_no": u.unit_no, "unit_name": u.name}
            for u in db.scalars(select(Unit).where(Unit.id.in_(wanted)))
        }
    return {
        o.id: {"officer_no": o.officer_no, "officer_name": o.name}
        for o in db.scalars(select(Officer).where(Officer.id.in_(wanted)))
    }


def build_report(
    db: Session,
    period: Period,
    *,
    groups: Sequence[GroupBy] = (GroupBy.UNIT, GroupBy.OFFICER),
    unit_id: int | None = None,
) -> dict[str, Any]:
    """{"period", "totals", "by_unit"?, "by_officer"?}; rows sorted by number, unknown (None) last."""
    partial = _groups(db, period, unit_id)
    totals = _Sums()
    for sums in partial.values():
        totals.add(sums)
    result: dict[str, Any] = {"period": period.as_dict(), "totals": totals.figures()}
    for by in groups:
        rolled = _roll_up(partial, (lambda k: k[0]) if by is GroupBy.UNIT else (lambda k: k[1]))
        labels = _labels(db, by, rolled)
        number = "unit_no" if by is GroupBy.UNIT else "officer_no"
        unknown = {number: None, number.replace("_no", "_name"): None}
        rows = [{**labels.get(key, unknown), **sums.figures()} for key, sums in rolled.items()]
        rows.sort(key=lambda r: (r[number] is None, r[number] or ""))
        result[f"by_{by.value}"] = rows
    return result
