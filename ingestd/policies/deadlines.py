"""Upload deadlines: when footage must be stored, how far an extension may reach, and what is late.

Decisions taken from the regulations:

* The deadline runs from the end of the recording (001 art. 24 ¶1: "音像记录完成后…二十四小时内").
* "Or of the return from field work" (001 art. 24 ¶2; 003 art. 11) is an exception for continuous,
  remote or hard-to-reach field work. It is honoured only when a person records the return time
  (`field_return_at`, with a reason, audited); it is never inferred from docking, because docking *is*
  the storing: a basis of max(end, dock time) would make nothing ever late. The basis is then
  max(recording end, field_return_at).
* An extension replaces the 24 h window by at most 3 working days counted from the same basis
  (003 art. 11: "返还单位后24小时内, 特殊情况不得超过3个工作日"). It is a ceiling on the whole delay,
  not 3 days on top of the first 24 h. It never makes a deadline earlier than the unextended one.
* Exactly at the deadline is on time; one microsecond after is late.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ingestd.policies.calendar import WorkingCalendar
from ingestd.policies.errors import ExtensionRefusedError
from ingestd.policies.flags import FlagDecision
from store.kinds import FlagKind
from store.times import iso, utc

DEFAULT_WINDOW = timedelta(hours=24)
MAX_EXTENSION_WORKING_DAYS = 3  # 003 art. 11; the configuration may only lower it


def recording_end(recorded_at: datetime, duration_s: float | None) -> datetime:
    """End of a recording from its corrected start; an unknown duration counts from the start (stricter)."""
    start = utc(recorded_at, "recorded_at")
    if duration_s is None or duration_s <= 0:
        return start
    return start + timedelta(seconds=duration_s)


def deadline_basis(recording_end: datetime, field_return_at: datetime | None = None) -> datetime:
    """When the clock starts: the recording's end, or a recorded later return from field work."""
    end = utc(recording_end, "recording_end")
    if field_return_at is None:
        return end
    return max(end, utc(field_return_at, "field_return_at"))


def deadline_for(
    recording_end: datetime, window: timedelta = DEFAULT_WINDOW, *, field_return_at: datetime | None = None
) -> datetime:
    if window <= timedelta(0):
        raise ValueError(f"deadline window must be positive, got {window}")
    return deadline_basis(recording_end, field_return_at) + window


def extend_deadline(
    basis: datetime,
    *,
    reason: str,
    working_days: int,
    calendar: WorkingCalendar,
    max_working_days: int = MAX_EXTENSION_WORKING_DAYS,
    window: timedelta = DEFAULT_WINDOW,
) -> datetime:
    """The extended deadline: `working_days` working days after `basis`, same local wall time.

    `basis` is what `deadline_basis` returns (recording end, or recorded return from field work).
    Refused without a reason, or beyond `max_working_days` (itself capped at 3 by the regulation).
    """
    if not reason.strip():
        raise ExtensionRefusedError(detail="a reason must be recorded (003 art. 11 allows it only for cause)")
    ceiling = min(max_working_days, MAX_EXTENSION_WORKING_DAYS)
    if ceiling < 1:
        raise ExtensionRefusedError(detail="extensions are disabled (max_extension_working_days = 0)")
    if working_days < 1:
        raise ExtensionRefusedError(detail=f"an extension is 1 to {ceiling} working days, not {working_days}")
    if working_days > ceiling:
        raise ExtensionRefusedError(
            detail=f"{working_days} working days exceeds the maximum of {ceiling} (003 art. 11)"
        )
    original = utc(basis, "basis") + window
    return max(original, calendar.add_working_days(basis, working_days))


def lateness(ingested_at: datetime, deadline: datetime) -> timedelta | None:
    """How late the footage was stored; None when on time (exactly at the deadline is on time)."""
    delay = utc(ingested_at, "ingested_at") - utc(deadline, "deadline")
    return delay if delay > timedelta(0) else None


@dataclass(frozen=True, slots=True)
class DeadlineFacts:
    """A stored recording and the deadline the catalog holds for it (extension already applied)."""

    recording_id: int
    camera_serial: str
    ingested_at: datetime
    deadline_at: datetime
    camera_id: int | None = None


def evaluate_late(recordings: Iterable[DeadlineFacts], now: datetime) -> list[FlagDecision]:
    """One LATE flag per recording stored after its deadline, in recording-id order."""
    raised_at = utc(now, "now")
    decisions: list[FlagDecision] = []
    for facts in sorted(recordings, key=lambda f: f.recording_id):
        late_by = lateness(facts.ingested_at, facts.deadline_at)
        if late_by is None:
            continue
        decisions.append(
            FlagDecision(
                kind=FlagKind.LATE,
                dedup_key=f"late:r{facts.recording_id}",
                raised_at=raised_at,
                camera_serial=facts.camera_serial,
                camera_id=facts.camera_id,
                recording_id=facts.recording_id,
                details={
                    "deadline_at": iso(facts.deadline_at),
                    "ingested_at": iso(facts.ingested_at),
                    "lateness_s": late_by.total_seconds(),
                },
            )
        )
    return decisions
