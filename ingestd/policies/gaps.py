"""Gaps and interruptions that need a written explanation (000 art. 12; 001 art. 23; 002 art. 19).

Recordings are compared only with the same camera's recordings made within the same check-out: the
time between two check-outs (docked, charging) is not a gap. Within a group, ordered by start, a gap
runs from the latest end so far to the next start; only a gap strictly longer than the threshold is
flagged. Overlaps and back-to-back split segments are not gaps. A recording the camera cut
short (power loss, storage full, a fault: `interrupted`) is flagged on its own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ingestd.policies.flags import FlagDecision
from store.kinds import FlagKind
from store.times import iso, utc


@dataclass(frozen=True, slots=True)
class RecordingSpan:
    """A recording's corrected span and the check-out it was made in.

    `checkout_at` is the check-out instant of the custody period the recording falls in; None when no
    check-out covers it (such a recording is compared with nothing). `interrupted` is set by the ingest
    when the file or the camera marks the recording as cut by a device interruption rather than stopped.
    """

    recording_id: int
    camera_serial: str
    checkout_at: datetime | None
    start: datetime
    end: datetime
    interrupted: bool = False
    interruption_cause: str | None = None
    camera_id: int | None = None


def evaluate_gaps(
    recordings: Iterable[RecordingSpan], threshold: timedelta, now: datetime
) -> list[FlagDecision]:
    """GAP flags for long gaps and INTERRUPTED flags for cut recordings, in a deterministic order."""
    if threshold < timedelta(0):
        raise ValueError(f"gap threshold must not be negative, got {threshold}")
    at = utc(now, "now")
    groups: dict[tuple[str, datetime], list[RecordingSpan]] = defaultdict(list)
    decisions: list[FlagDecision] = []
    for span in sorted(recordings, key=lambda s: (s.camera_serial, utc(s.start, "start"), s.recording_id)):
        if utc(span.end, "end") < utc(span.start, "start"):
            raise ValueError(f"recording {span.recording_id} ends before it starts")
        if span.interrupted:
            decisions.append(_interrupted(span, at))
        if span.checkout_at is not None:
            groups[(span.camera_serial, utc(span.checkout_at, "checkout_at"))].append(span)
    for (serial, checkout_at), spans in sorted(groups.items()):
        # `prev` is the recording that has run longest so far: a short clip made inside a long one
        # must not hide or invent a gap after the long one ends.
        prev = spans[0]
        for nxt in spans[1:]:
            gap = utc(nxt.start) - utc(prev.end)
            if gap > threshold:
                decisions.append(
                    _gap(
                        serial=serial,
                        checkout_at=checkout_at,
                        prev=prev,
                        nxt=nxt,
                        gap=gap,
                        threshold=threshold,
                        at=at,
                    )
                )
            if utc(nxt.end) >= utc(prev.end):
                prev = nxt
    return decisions


def _interrupted(span: RecordingSpan, at: datetime) -> FlagDecision:
    return FlagDecision(
        kind=FlagKind.INTERRUPTED,
        dedup_key=f"interrupted:r{span.recording_id}",
        raised_at=at,
        camera_serial=span.camera_serial,
        camera_id=span.camera_id,
        recording_id=span.recording_id,
        details={
            "reason": "needs explanation",
            "ended_at": iso(span.end),
            "cause": span.interruption_cause,
        },
    )


def _gap(
    *,
    serial: str,
    checkout_at: datetime,
    prev: RecordingSpan,
    nxt: RecordingSpan,
    gap: timedelta,
    threshold: timedelta,
    at: datetime,
) -> FlagDecision:
    return FlagDecision(
        kind=FlagKind.GAP,
        dedup_key=f"gap:r{prev.recording_id}:r{nxt.recording_id}",
        raised_at=at,
        camera_serial=serial,
        camera_id=nxt.camera_id,
        recording_id=nxt.recording_id,
        details={
            "reason": "needs explanation",
            "checkout_at": iso(checkout_at),
            "previous_recording_id": prev.recording_id,
            "gap_from": iso(prev.end),
            "gap_until": iso(nxt.start),
            "gap_s": gap.total_seconds(),
            "threshold_s": threshold.total_seconds(),
        },
    )
