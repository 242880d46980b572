"""The working-day calendar: weekends, CN holidays with 调休 days, config overrides, DST in other zones."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import holidays
import pytest
import time_machine

from ingestd.policies.calendar import WorkingCalendar
from ingestd.policies.errors import CalendarError
from store.times import NaiveDatetimeError

CST = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")


def cn(**kwargs: frozenset[date]) -> WorkingCalendar:
    return WorkingCalendar(country="CN", timezone="Asia/Shanghai", **kwargs)


def berlin(**kwargs: frozenset[date]) -> WorkingCalendar:
    return WorkingCalendar(country="DE", timezone="Europe/Berlin", **kwargs)


def test_the_holidays_package_knows_2026_national_day_and_its_make_up_days() -> None:
    # The facts the other tests rely on, checked against the installed package rather than assumed.
    table = holidays.country_holidays("CN", years=2026)
    for day in (1, 2, 3, 5, 6, 7):
        assert date(2026, 10, day) in table
    assert date(2026, 10, 8) not in table
    assert {date(2026, 9, 20), date(2026, 10, 10)} <= set(table.weekend_workdays)
    assert date(2026, 10, 10).weekday() == 5  # a Saturday


def test_weekdays_weekends_holidays_and_make_up_days() -> None:
    calendar = cn()
    assert calendar.is_working_day(date(2026, 3, 6))  # Friday
    assert not calendar.is_working_day(date(2026, 3, 7))  # Saturday
    assert not calendar.is_working_day(date(2026, 10, 1))  # National Day, a Thursday
    assert not calendar.is_working_day(date(2026, 10, 7))  # substituted day off, a Wednesday
    assert calendar.is_working_day(date(2026, 10, 10))  # 调休 Saturday
    assert calendar.is_working_day(date(2026, 9, 20))  # 调休 Sunday
    assert calendar.is_working_day(date(2026, 2, 14))  # Spring Festival 调休 Saturday
    assert not calendar.is_working_day(date(2026, 2, 23))  # Spring Festival day off, a Monday


def test_config_lists_win_over_the_package() -> None:
    # 2027: the package has no announced make-up days yet, so the config must be able to add them.
    plain_saturday = date(2027, 1, 9)
    assert not cn().is_working_day(plain_saturday)
    assert cn(extra_working_days=frozenset({plain_saturday})).is_working_day(plain_saturday)
    assert cn(extra_working_days=frozenset({date(2026, 10, 1)})).is_working_day(date(2026, 10, 1))
    closure = date(2026, 3, 11)  # a Wednesday
    assert cn().is_working_day(closure)
    assert not cn(extra_holidays=frozenset({closure})).is_working_day(closure)


def test_add_working_days_skips_the_weekend_keeping_local_wall_time() -> None:
    friday = datetime(2026, 3, 6, 10, 0, tzinfo=CST)
    monday = cn().add_working_days(friday, 1)
    assert monday == datetime(2026, 3, 9, 10, 0, tzinfo=CST)
    assert monday.tzinfo is UTC
    assert cn().add_working_days(friday, 0) == friday


def test_working_days_count_in_the_calendar_zone_not_in_utc() -> None:
    # Friday 20:00 UTC is already Saturday 04:00 in Shanghai: the next working day is Monday there.
    start = datetime(2026, 3, 6, 20, 0, tzinfo=UTC)
    assert cn().add_working_days(start, 1) == datetime(2026, 3, 9, 4, 0, tzinfo=CST)
    assert cn().add_working_days(start, 1) == datetime(2026, 3, 8, 20, 0, tzinfo=UTC)


def test_national_day_week_counts_the_make_up_saturday() -> None:
    calendar = cn(extra_working_days=frozenset({date(2026, 10, 10)}))
    eve = datetime(2026, 9, 30, 17, 0, tzinfo=CST)
    assert calendar.add_working_days(eve, 1) == datetime(2026, 10, 8, 17, 0, tzinfo=CST)
    assert calendar.add_working_days(eve, 3) == datetime(2026, 10, 10, 17, 0, tzinfo=CST)
    # Without the Saturday (e.g. a year the package does not cover) the third day is Monday.
    saturday_off = cn(extra_holidays=frozenset({date(2026, 10, 10)}))
    assert saturday_off.add_working_days(eve, 3) == datetime(2026, 10, 12, 17, 0, tzinfo=CST)


def test_spring_festival_make_up_saturday_then_nine_days_off() -> None:
    friday = datetime(2026, 2, 13, 9, 0, tzinfo=CST)
    calendar = cn(extra_working_days=frozenset({date(2026, 2, 14)}))
    assert calendar.add_working_days(friday, 1) == datetime(2026, 2, 14, 9, 0, tzinfo=CST)
    assert calendar.add_working_days(friday, 2) == datetime(2026, 2, 24, 9, 0, tzinfo=CST)


@pytest.mark.parametrize(
    ("start", "expected_utc", "elapsed"),
    [
        # Spring forward on Sunday 29 March 2026: CET (+1) to CEST (+2).
        (
            datetime(2026, 3, 27, 10, 0, tzinfo=BERLIN),
            datetime(2026, 3, 30, 8, 0, tzinfo=UTC),
            timedelta(hours=71),
        ),
        # Fall back on Sunday 25 October 2026: CEST (+2) to CET (+1).
        (
            datetime(2026, 10, 23, 10, 0, tzinfo=BERLIN),
            datetime(2026, 10, 26, 9, 0, tzinfo=UTC),
            timedelta(hours=73),
        ),
    ],
)
def test_dst_change_keeps_wall_time_and_shifts_utc(
    start: datetime, expected_utc: datetime, elapsed: timedelta
) -> None:
    result = berlin().add_working_days(start, 1)
    assert result == expected_utc
    assert result.astimezone(BERLIN).hour == 10
    assert result - start == elapsed


def test_a_skipped_wall_time_moves_forward_and_a_repeated_one_takes_the_first() -> None:
    spring_sunday, autumn_sunday = date(2026, 3, 29), date(2026, 10, 25)
    calendar = berlin(extra_working_days=frozenset({spring_sunday, autumn_sunday}))
    # 02:30 does not exist on 29 March: it becomes 03:30 CEST.
    skipped = calendar.add_working_days(datetime(2026, 3, 28, 2, 30, tzinfo=BERLIN), 1)
    assert skipped == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    # 02:30 happens twice on 25 October: the first (CEST) occurrence.
    repeated = calendar.add_working_days(datetime(2026, 10, 24, 2, 30, tzinfo=BERLIN), 1)
    assert repeated == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


def test_refusals() -> None:
    with pytest.raises(CalendarError, match="both"):
        cn(extra_holidays=frozenset({date(2026, 1, 5)}), extra_working_days=frozenset({date(2026, 1, 5)}))
    with pytest.raises(CalendarError, match="time zone"):
        WorkingCalendar(timezone="Mars/Olympus")
    with pytest.raises(CalendarError, match="no calendar"):
        WorkingCalendar(country="XX")
    with pytest.raises(CalendarError, match="-1"):
        cn().add_working_days(datetime(2026, 3, 6, tzinfo=UTC), -1)
    with pytest.raises(NaiveDatetimeError):
        cn().add_working_days(datetime(2026, 3, 6), 1)  # noqa: DTZ001 - the naive value under test
    with pytest.raises(TypeError):
        cn().is_working_day(datetime(2026, 3, 6, tzinfo=UTC))


def test_a_calendar_with_no_working_day_is_refused_not_looped_forever() -> None:
    year = frozenset(date(2027, 1, 1) + timedelta(days=i) for i in range(800))
    with pytest.raises(CalendarError, match="no working day"):
        cn(extra_holidays=year).add_working_days(datetime(2027, 1, 1, tzinfo=UTC), 1)


@time_machine.travel(datetime(2031, 7, 1, tzinfo=UTC), tick=False)
def test_results_depend_on_the_start_given_not_on_todays_date() -> None:
    # The frozen "today" is in 2031; the answer still follows the 2026 start and 2026 holidays.
    eve = datetime(2026, 9, 30, 17, 0, tzinfo=CST)
    assert cn().add_working_days(eve, 3) == datetime(2026, 10, 10, 17, 0, tzinfo=CST)
