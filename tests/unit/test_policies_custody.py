"""Check-out attribution in its three cases (000 art. 10: a clerk may check cameras out for a squad)."""

from __future__ import annotations

import pytest

from ingestd.policies.custody import CustodyAttribution, attribute_checkout
from ingestd.policies.errors import AttributionError


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
