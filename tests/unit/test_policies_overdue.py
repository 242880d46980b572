"""Overdue cameras: the window boundary, docked or checked-in cameras, and job-level idempotence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from ingestd.policies.flags import FlagDecision, new_flags
from ingestd.policies.overdue import CameraCustodyFacts, evaluate_overdue
from store.models import FlagKind

WINDOW = timedelta(hours=24)
OUT = datetime(2026, 3, 2, 0, 30, tzinfo=UTC)  # 08:30 in Shanghai
US = timedelta(microseconds=1)


def camera(
    serial: str = "ZF00001", *, checked_out_at: datetime | None = OUT, last_docked_at: datetime | None = None
) -> CameraCustodyFacts:
    return CameraCustodyFacts(
        camera_serial=serial,
        checked_out_at=checked_out_at,
        last_docked_at=last_docked_at,
        holder_officer_no="000123",
        camera_id=3,
    )


def test_exactly_the_window_is_not_overdue_one_microsecond_more_is() -> None:
    assert evaluate_overdue([camera()], WINDOW, OUT + WINDOW) == []
    [flag] = evaluate_overdue([camera()], WINDOW, OUT + WINDOW + US)
    assert flag.kind is FlagKind.OVERDUE
    assert flag.dedup_key == "overdue:ZF00001:2026-03-02T00:30:00+00:00"
    assert flag.camera_id == 3
    assert flag.details == {
        "checked_out_at": "2026-03-02T00:30:00+00:00",
        "due_at": "2026-03-03T00:30:00+00:00",
        "holder_officer_no": "000123",
    }


def test_checked_in_or_docked_since_check_out_is_not_overdue() -> None:
    later = OUT + 3 * WINDOW
    assert evaluate_overdue([camera(checked_out_at=None)], WINDOW, later) == []
    assert evaluate_overdue([camera(last_docked_at=OUT + timedelta(hours=9))], WINDOW, later) == []
    # A dock from before this check-out does not count.
    stale = camera(last_docked_at=OUT - timedelta(hours=1))
    assert len(evaluate_overdue([stale], WINDOW, later)) == 1


def test_the_job_run_twice_flags_nothing_twice() -> None:
    cameras = [camera("ZF00002"), camera("ZF00001"), camera("ZF00003", checked_out_at=None)]
    first = evaluate_overdue(cameras, WINDOW, OUT + WINDOW + timedelta(minutes=1))
    second = evaluate_overdue(reversed(cameras), WINDOW, OUT + WINDOW + timedelta(hours=5))
    assert [f.camera_serial for f in first] == ["ZF00001", "ZF00002"]
    assert [f.dedup_key for f in second] == [f.dedup_key for f in first]
    assert [f.details for f in second] == [f.details for f in first]
    raised: set[str] = set()
    assert new_flags(first, raised) == first
    raised.update(f.dedup_key for f in first)
    assert new_flags(second, raised) == []


def test_a_new_check_out_is_a_new_flag() -> None:
    first = evaluate_overdue([camera()], WINDOW, OUT + 2 * WINDOW)
    again_out = OUT + 3 * WINDOW
    second = evaluate_overdue([camera(checked_out_at=again_out)], WINDOW, again_out + 2 * WINDOW)
    assert len(new_flags(second, {f.dedup_key for f in first})) == 1


def test_new_flags_drops_duplicates_within_one_batch() -> None:
    flag = FlagDecision(FlagKind.OVERDUE, "overdue:x:1", OUT)
    assert new_flags([flag, flag], ()) == [flag]
    with pytest.raises(ValueError, match="malformed"):
        FlagDecision(FlagKind.OVERDUE, "late:x", OUT)


@time_machine.travel(datetime(2040, 1, 1, tzinfo=UTC), tick=False)
def test_overdue_follows_the_injected_now_not_the_clock() -> None:
    # Real "today" is 2040: reading it would make the camera overdue.
    assert evaluate_overdue([camera()], WINDOW, OUT + WINDOW) == []
    [flag] = evaluate_overdue([camera()], WINDOW, OUT + WINDOW + US)
    assert flag.raised_at == OUT + WINDOW + US
