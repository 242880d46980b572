"""Times as the project holds them: timezone-aware UTC, never naive.

Standard library only, so the store and the pure policies share one refusal of naive datetimes
without either loading the other's dependencies.
"""

from __future__ import annotations

from datetime import UTC, datetime

from store.errors import StoreError


class NaiveDatetimeError(StoreError, ValueError):
    """A naive datetime reached code that needs its zone. Always a bug in the caller: times are UTC-aware
    everywhere, and guessing the zone would move evidence in time."""

    template = "{name} must be a timezone-aware datetime, got naive {value}"
    exit_code = 70  # EX_SOFTWARE


def utc(value: datetime, name: str = "datetime") -> datetime:
    """`value` converted to UTC; a naive datetime is refused rather than guessed."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise NaiveDatetimeError(name=name, value=value.isoformat())
    return value.astimezone(UTC)


def iso(value: datetime) -> str:
    """Canonical UTC ISO 8601 text, the form used inside flag keys and details."""
    return utc(value).isoformat()
