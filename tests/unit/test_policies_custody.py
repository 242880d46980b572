"""Check-out attribution in its three cases (000 art. 10: a clerk may check cameras out for a squad), and
custody periods."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ingestd.policies.custody import (
    CustodyAttribution,
    CustodyPeriod,
    attribute_checkout,
    checkout_covering,
    custody_periods,
)
from ingestd.policies.errors import AttributionError
from store.kinds import CustodyKind


def test_a_clerk_naming_an_officer_is_the_actor_and_the_officer_holds_it() -> None:
    result = attribute_checkout("000123", "neiqin01", "000999")
    assert result == CustodyAttribution("000123", "neiqin01", "clerk", "named-by-clerk")


def test_without_a_named_officer_the_assigned_officer_holds_it() -> None:
    assert attribute_checkout(None, None, "000999") == CustodyAttribution(
        "000999", "ingestd", "daemon", "assigned-officer"
    )
    # A clerk running `ingestctl checkout` without --officer is still the actor.
    assert attribute_checkout(None, "neiqin01", "000999") == CustodyAttribution(
        "000999", "neiqin01", "clerk", "assigned-officer"
    )


@pytest.mark.parametrize("assigned", [None, "", "      "])
def test_with_no_officer_known_the_check_out_is_unassigned(assigned: str | None) -> None:
    assert attribute_checkout(None, None, assigned) == CustodyAttribution(
        None, "ingestd", "daemon", "unassigned"
    )


def test_naming_an_officer_needs_a_clerk_and_a_valid_number() -> None:
    with pytest.raises(AttributionError, match="no user"):
        attribute_checkout("000123", None, None)
    with pytest.raises(AttributionError, match="not an officer number"):
        attribute_checkout("", "neiqin01", None)
    with pytest.raises(AttributionError, match="not an officer number"):
        attribute_checkout("1234567", "neiqin01", None)
    with pytest.raises(AttributionError, match="not an officer number"):
        attribute_checkout("12 34", "neiqin01", None)


OUT = datetime(2026, 5, 11, 0, 30, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_custody_periods_run_from_check_out_to_the_next_check_in() -> None:
    periods = custody_periods(
        [
            (CustodyKind.CHECK_IN, OUT - HOUR),  # in before any check-out: no period
            (CustodyKind.CHECK_OUT, OUT),
            (CustodyKind.CHECK_OUT, OUT + HOUR),  # re-attributed while out: the period goes on
            (CustodyKind.CHECK_IN, OUT + 9 * HOUR),
            (CustodyKind.CHECK_OUT, OUT + 24 * HOUR),  # still out
        ]
    )
    assert periods == [
        CustodyPeriod(OUT, OUT + 9 * HOUR),
        CustodyPeriod(OUT + 24 * HOUR, None),
    ]
    assert checkout_covering(periods, OUT) == OUT
    assert checkout_covering(periods, OUT + 9 * HOUR) is None  # the check-in instant is back at the station
    assert checkout_covering(periods, OUT + 30 * 24 * HOUR) == OUT + 24 * HOUR
    assert checkout_covering(periods, OUT - HOUR) is None
