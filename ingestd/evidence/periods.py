"""Reporting periods: local calendar days (in the configured zone) turned into a UTC half-open range."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from ingestd.evidence.errors import EvidenceUsageError
from store.times import iso

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True)
class Period:
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    label: str  # what the caller asked for, e.g. "2026-03" or "2026-03-01..2026-03-15 (Asia/Shanghai)"

    def as_dict(self) -> dict[str, str]:
        return {"start": iso(self.start), "end": iso(self.end), "label": self.label}


def _date(text: str, flag: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise EvidenceUsageError(detail=f"{flag} {text!r} is not a date (YYYY-MM-DD)") from None


def parse_period(*, month: str | None, start: str | None, end: str | None, zone: str) -> Period:
    """`month` (YYYY-MM) or `start`..`end` (YYYY-MM-DD, both days included), as local days in `zone`."""
    tz = ZoneInfo(zone)
    if month is not None:
        if start is not None or end is not None:
            raise EvidenceUsageError(detail="give either --month or --from/--to, not both")
        match = _MONTH.match(month)
        if not match or not 1 <= int(match.group(2)) <= 12:
            raise EvidenceUsageError(detail=f"--month {month!r} is not YYYY-MM")
        first = date(int(match.group(1)), int(match.group(2)), 1)
        after = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        label = f"{month} ({zone})"
    else:
        if start is None or end is None:
            raise EvidenceUsageError(detail="give --month YYYY-MM, or both --from and --to YYYY-MM-DD")
        first = _date(start, "--from")
        last = _date(end, "--to")
        if last < first:
            raise EvidenceUsageError(detail=f"--to {end} is before --from {start}")
        after = last + timedelta(days=1)
        label = f"{first.isoformat()}..{last.isoformat()} ({zone})"
    return Period(
        start=datetime.combine(first, time(), tz).astimezone(UTC),
        end=datetime.combine(after, time(), tz).astimezone(UTC),
        label=label,
    )
