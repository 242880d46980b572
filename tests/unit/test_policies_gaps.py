"""Gaps needing explanation and interrupted recordings (000 art. 12; 001 art. 23; 002 art. 19)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from ingestd.policies.flags import new_flags
from ingestd.policies.gaps import RecordingSpan, evaluate_gaps
from store.models import FlagKind

THRESHOLD = timedelta(minutes=10)
OUT = datetime(2026, 3, 2, 0, 30, tzinfo=UTC)
T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
NOW = datetime(2026, 3, 3, tzinfo=UTC)
US = timedelta(microseconds=1)


def span(
    recording_id: int,
    start_min: float,
    end_min: float,
    *,
    serial: str = "ZF00001",
    checkout_at: datetime | None = OUT,
    interrupted: bool = False,
    extra: timedelta = timedelta(0),
) -> RecordingSpan:
    return RecordingSpan(
        recording_id=recording_id,
        camera_serial=serial,
        checkout_at=checkout_at,
        start=T0 + timedelta(minutes=start_min) + extra,
        end=T0 + timedelta(minutes=end_min),
        interrupted=interrupted,
    )


def test_a_gap_of_exactly_the_threshold_is_not_flagged_one_microsecond_more_is() -> None:
    assert evaluate_gaps([span(1, 0, 5), span(2, 15, 20)], THRESHOLD, NOW) == []
    [flag] = evaluate_gaps([span(1, 0, 5), span(2, 15, 20, extra=US)], THRESHOLD, NOW)
    assert flag.kind is FlagKind.GAP
    assert flag.dedup_key == "gap:r1:r2"
    assert flag.recording_id == 2
    assert flag.details["gap_s"] == 600.000001
    assert flag.details["reason"] == "needs explanation"
    assert flag.details["gap_from"] == "2026-03-02T02:05:00+00:00"


def test_only_the_same_camera_within_one_checkout_is_compared() -> None:
    other_camera = [span(1, 0, 5), span(2, 60, 70, serial="ZF00002")]
    assert evaluate_gaps(other_camera, THRESHOLD, NOW) == []
    next_checkout = OUT + timedelta(hours=2)
    other_checkout = [span(1, 0, 5), span(2, 60, 70, checkout_at=next_checkout)]
    assert evaluate_gaps(other_checkout, THRESHOLD, NOW) == []
    unknown_checkout = [span(1, 0, 5), span(2, 60, 70, checkout_at=None)]
    assert evaluate_gaps(unknown_checkout, THRESHOLD, NOW) == []
    same = [span(1, 0, 5), span(2, 60, 70, checkout_at=OUT)]
    assert len(evaluate_gaps(same, THRESHOLD, NOW)) == 1


def test_gaps_are_found_in_start_order_whatever_the_input_order() -> None:
    flags = evaluate_gaps([span(3, 100, 110), span(1, 0, 5), span(2, 40, 50)], THRESHOLD, NOW)
    assert [f.dedup_key for f in flags] == ["gap:r1:r2", "gap:r2:r3"]


def test_a_clip_inside_a_long_recording_neither_hides_nor_invents_a_gap() -> None:
    # 1 runs 0-60; 2 is a clip at 10-20; 3 starts at 55, before 1 ends: no gap at all.
    assert evaluate_gaps([span(1, 0, 60), span(2, 10, 20), span(3, 55, 90)], THRESHOLD, NOW) == []
    # After 1 ends at 60, the next start at 75 is 15 minutes later: measured from 1, not from 2.
    [flag] = evaluate_gaps([span(1, 0, 60), span(2, 10, 20), span(3, 75, 90)], THRESHOLD, NOW)
    assert flag.dedup_key == "gap:r1:r3"
    assert flag.details["gap_s"] == 900.0


def test_back_to_back_split_segments_are_not_gaps_but_an_interruption_is_flagged() -> None:
    segments = [span(1, 0, 10), span(2, 10, 20), span(3, 20, 25, interrupted=True), span(4, 26, 30)]
    [flag] = evaluate_gaps(segments, THRESHOLD, NOW)
    assert flag.kind is FlagKind.INTERRUPTED
    assert flag.dedup_key == "interrupted:r3"
    assert flag.recording_id == 3


def test_running_twice_flags_nothing_twice() -> None:
    spans = [span(1, 0, 5), span(2, 60, 70, interrupted=True), span(3, 100, 110)]
    first = evaluate_gaps(spans, THRESHOLD, NOW)
    second = evaluate_gaps(list(reversed(spans)), THRESHOLD, NOW + timedelta(hours=1))
    assert sorted(f.dedup_key for f in first) == ["gap:r1:r2", "gap:r2:r3", "interrupted:r2"]
    assert [f.dedup_key for f in second] == [f.dedup_key for f in first]
    assert new_flags(second, {f.dedup_key for f in first}) == []


def test_impossible_spans_are_refused() -> None:
    with pytest.raises(ValueError, match="ends before"):
        evaluate_gaps([span(1, 10, 5)], THRESHOLD, NOW)


@time_machine.travel(datetime(2033, 5, 5, tzinfo=UTC), tick=False)
def test_raised_at_is_the_injected_now() -> None:
    [flag] = evaluate_gaps([span(1, 0, 5), span(2, 60, 70)], THRESHOLD, NOW)
    assert flag.raised_at == NOW
