"""Upload deadlines: the 24 h boundary, lateness, extensions and their limits (001 art. 24; 003 art. 11)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine

from ingestd.policies.calendar import WorkingCalendar
from ingestd.policies.deadlines import (
    DeadlineFacts,
    deadline_basis,
    deadline_for,
    evaluate_late,
    extend_deadline,
    lateness,
    recording_end,
)
from ingestd.policies.errors import ExtensionRefusedError
from ingestd.policies.flags import new_flags
from store.models import FlagKind
from store.times import NaiveDatetimeError

CST = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")
US = timedelta(microseconds=1)
END = datetime(2026, 3, 4, 9, 30, tzinfo=UTC)
CN = WorkingCalendar()


def test_deadline_is_end_plus_window() -> None:
    assert deadline_for(END) == END + timedelta(hours=24)
    assert deadline_for(END, timedelta(hours=6)) == END + timedelta(hours=6)
    with pytest.raises(ValueError, match="positive"):
        deadline_for(END, timedelta(0))


def test_exactly_at_the_deadline_is_on_time_and_one_microsecond_after_is_late() -> None:
    deadline = deadline_for(END)
    assert lateness(END + timedelta(hours=24), deadline) is None
    assert lateness(END + timedelta(hours=24) + US, deadline) == US
    assert lateness(END, deadline) is None


def test_recording_end_from_corrected_start_and_duration() -> None:
    assert recording_end(END, 90.5) == END + timedelta(seconds=90.5)
    assert recording_end(END, None) == END  # unknown duration: the stricter, earlier end


def test_a_recorded_return_from_field_work_moves_the_basis_only_later() -> None:
    back = END + timedelta(days=2)
    assert deadline_basis(END, back) == back
    assert deadline_for(END, field_return_at=back) == back + timedelta(hours=24)
    assert deadline_basis(END, END - timedelta(hours=1)) == END
    assert deadline_basis(END) == END


def facts(recording_id: int, ingested_at: datetime) -> DeadlineFacts:
    return DeadlineFacts(
        recording_id=recording_id,
        camera_serial="ZF00001",
        ingested_at=ingested_at,
        deadline_at=deadline_for(END),
        camera_id=7,
    )


def test_evaluate_late_flags_only_the_late_one_with_its_lateness() -> None:
    now = datetime(2026, 3, 6, tzinfo=UTC)
    recordings = [facts(2, END + timedelta(hours=24) + US), facts(1, END + timedelta(hours=24))]
    decisions = evaluate_late(recordings, now)
    assert len(decisions) == 1
    flag = decisions[0]
    assert flag.kind is FlagKind.LATE
    assert flag.recording_id == 2
    assert flag.camera_id == 7
    assert flag.dedup_key == "late:r2"
    assert flag.raised_at == now
    assert flag.details == {
        "deadline_at": "2026-03-05T09:30:00+00:00",
        "ingested_at": "2026-03-05T09:30:00.000001+00:00",
        "lateness_s": 1e-06,
    }


def test_evaluating_twice_flags_nothing_twice() -> None:
    recordings = [facts(i, END + timedelta(hours=24 + i)) for i in range(4)]
    first = evaluate_late(recordings, datetime(2026, 3, 6, tzinfo=UTC))
    second = evaluate_late(recordings, datetime(2026, 3, 7, tzinfo=UTC))
    assert [d.dedup_key for d in first] == ["late:r1", "late:r2", "late:r3"]
    assert [d.dedup_key for d in second] == [d.dedup_key for d in first]
    assert new_flags(first, set()) == first
    assert new_flags(second, {d.dedup_key for d in first}) == []


@time_machine.travel(datetime(2035, 1, 1, tzinfo=UTC), tick=False)
def test_evaluate_late_uses_the_injected_now_not_the_clock() -> None:
    now = datetime(2026, 3, 6, tzinfo=UTC)
    [flag] = evaluate_late([facts(1, END + timedelta(days=1, hours=1))], now)
    assert flag.raised_at == now


def test_extension_across_a_weekend() -> None:
    friday_evening = datetime(2026, 3, 6, 18, 0, tzinfo=CST)
    extended = extend_deadline(friday_evening, reason="remote site", working_days=1, calendar=CN)
    assert extended == datetime(2026, 3, 9, 18, 0, tzinfo=CST)  # Monday, not Saturday
    three = extend_deadline(friday_evening, reason="remote site", working_days=3, calendar=CN)
    assert three == datetime(2026, 3, 11, 18, 0, tzinfo=CST)


def test_extension_across_national_day_counts_the_make_up_saturday() -> None:
    calendar = WorkingCalendar(extra_working_days=frozenset({date(2026, 10, 10)}))
    eve = datetime(2026, 9, 30, 17, 0, tzinfo=CST)
    extended = extend_deadline(eve, reason="continuous duty", working_days=3, calendar=calendar)
    assert extended == datetime(2026, 10, 10, 17, 0, tzinfo=CST)


def test_extension_across_a_dst_change_keeps_berlin_wall_time() -> None:
    calendar = WorkingCalendar(country="DE", timezone="Europe/Berlin")
    friday = datetime(2026, 10, 23, 18, 0, tzinfo=BERLIN)  # 16:00 UTC, CEST
    extended = extend_deadline(friday, reason="remote site", working_days=1, calendar=calendar)
    assert extended.astimezone(BERLIN) == datetime(2026, 10, 26, 18, 0, tzinfo=BERLIN)
    assert extended == datetime(2026, 10, 26, 17, 0, tzinfo=UTC)  # CET now: one hour later in UTC


def test_an_extension_never_ends_before_the_plain_deadline() -> None:
    # A working Sunday across spring forward is only 23 h after Saturday noon; the 24 h stands.
    calendar = WorkingCalendar(
        country="DE", timezone="Europe/Berlin", extra_working_days=frozenset({date(2026, 3, 29)})
    )
    saturday = datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN)
    extended = extend_deadline(saturday, reason="remote site", working_days=1, calendar=calendar)
    # Absolute 24 h (aware arithmetic in one zone would add wall time, hence the conversion).
    assert extended == saturday.astimezone(UTC) + timedelta(hours=24)
    assert extended == datetime(2026, 3, 29, 11, 0, tzinfo=UTC)


@pytest.mark.parametrize("reason", ["", "   ", "\n"])
def test_an_extension_without_a_reason_is_refused(reason: str) -> None:
    with pytest.raises(ExtensionRefusedError, match="reason"):
        extend_deadline(END, reason=reason, working_days=1, calendar=CN)


def test_more_than_three_working_days_is_refused_whatever_the_setting() -> None:
    assert extend_deadline(END, reason="r", working_days=3, calendar=CN) > END
    with pytest.raises(ExtensionRefusedError, match="4 working days exceeds the maximum of 3"):
        extend_deadline(END, reason="r", working_days=4, calendar=CN)
    with pytest.raises(ExtensionRefusedError, match="maximum of 3"):
        extend_deadline(END, reason="r", working_days=4, calendar=CN, max_working_days=10)
    with pytest.raises(ExtensionRefusedError, match="maximum of 1"):
        extend_deadline(END, reason="r", working_days=2, calendar=CN, max_working_days=1)
    with pytest.raises(ExtensionRefusedError, match="not 0"):
        extend_deadline(END, reason="r", working_days=0, calendar=CN)
    with pytest.raises(ExtensionRefusedError, match="disabled"):
        extend_deadline(END, reason="r", working_days=1, calendar=CN, max_working_days=0)


def test_refusal_exit_code_and_naive_times() -> None:
    with pytest.raises(ExtensionRefusedError) as caught:
        extend_deadline(END, reason="", working_days=1, calendar=CN)
    assert caught.value.exit_code == 2
    with pytest.raises(NaiveDatetimeError) as naive:
        lateness(datetime(2026, 3, 5), END)  # noqa: DTZ001 - the naive value under test
    assert naive.value.exit_code == 70
