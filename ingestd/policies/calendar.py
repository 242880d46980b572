"""The working-day calendar behind deadline extensions (003 art. 11: "不得超过3个工作日").

A day is a working day when it is a weekday and not a public holiday, or when it is a make-up working
day (调休). Public holidays come from the `holidays` package for the configured country. For CN the
package also publishes the make-up weekend working days of the years the State Council has announced
(`weekend_workdays`, e.g. 2026-09-20 and 2026-10-10 around National Day); the configuration's
`extra_working_days` and `extra_holidays` cover years it does not know yet and local arrangements, and
they win over the package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

from ingestd.policies.errors import CalendarError
from store.times import utc

SATURDAY = 5
# A working day always lies within this many days of the last one; more means a broken calendar.
_MAX_SEARCH_DAYS = 366


@dataclass(frozen=True)
class _YearTable:
    holidays: frozenset[date]
    weekend_workdays: frozenset[date]
    weekend: frozenset[int]


@dataclass(frozen=True)
class WorkingCalendar:
    """Working days of one country, with deadlines kept in one local time zone.

    Immutable; the per-year holiday tables are cached inside, which changes no observable result.
    """

    country: str = "CN"
    timezone: str = "Asia/Shanghai"
    extra_holidays: frozenset[date] = frozenset()
    extra_working_days: frozenset[date] = frozenset()
    _years: dict[int, _YearTable] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        clash = self.extra_holidays & self.extra_working_days
        if clash:
            days = ", ".join(sorted(d.isoformat() for d in clash))
            raise CalendarError(detail=f"listed both as holiday and as working day: {days}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise CalendarError(detail=f"unknown time zone {self.timezone!r}") from None
        if self.country not in holidays.list_supported_countries():
            raise CalendarError(detail=f"the holidays package has no calendar for {self.country!r}")

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def _table(self, year: int) -> _YearTable:
        table = self._years.get(year)
        if table is None:
            country = holidays.country_holidays(self.country, years=year)
            # `weekend_workdays` holds every year the package knows; keep this year's only.
            workdays: set[date] = getattr(country, "weekend_workdays", set())
            weekend = getattr(country, "weekend", {SATURDAY, SATURDAY + 1})
            table = _YearTable(
                holidays=frozenset(country.keys()),
                weekend_workdays=frozenset(d for d in workdays if d.year == year),
                weekend=frozenset(weekend),
            )
            self._years[year] = table
        return table

    def is_working_day(self, day: date) -> bool:
        if isinstance(day, datetime):  # a datetime is a date too; its day depends on the zone
            raise TypeError("is_working_day takes a date; convert the datetime in the calendar's zone")
        if day in self.extra_working_days:
            return True
        if day in self.extra_holidays:
            return False
        table = self._table(day.year)
        if day.weekday() in table.weekend:
            return day in table.weekend_workdays
        return day not in table.holidays

    def working_days_after(self, start: date, n: int) -> date:
        """The n-th working day after `start` (`start` itself never counts)."""
        if n < 0:
            raise CalendarError(detail=f"cannot count {n} working days")
        day, counted, searched = start, 0, 0
        while counted < n:
            day += timedelta(days=1)
            searched += 1
            if self.is_working_day(day):
                counted, searched = counted + 1, 0
            elif searched > _MAX_SEARCH_DAYS:
                raise CalendarError(detail=f"no working day within a year after {day.isoformat()}")
        return day

    def add_working_days(self, start: datetime, n: int) -> datetime:
        """The same local wall time n working days later, in UTC.

        Working days are counted in the calendar's zone, so UTC moves by an hour across a DST change.
        A wall time that the change skips moves forward by the gap; one that occurs twice takes its
        first occurrence (PEP 495 fold=0), the earlier, stricter instant.
        """
        local = utc(start, "start").astimezone(self.zone)
        day = self.working_days_after(local.date(), n)
        wall = datetime.combine(day, local.time().replace(fold=0), tzinfo=self.zone)
        return utc(wall)
