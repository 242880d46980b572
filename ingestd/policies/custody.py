"""Who a check-out is attributed to, who is recorded as having done it, and when a camera was out.

000 art. 10 lets a squad's clerk (内勤) take cameras out for the squad, so the holder and the actor can
differ. Three cases, in order:

1. `ingestctl checkout DEVICE --officer N` run by a clerk: officer N holds it, the clerk is the actor.
2. Otherwise the camera's assigned officer (from its GA/T 947.4 identity, userNo) holds it; the actor
   is whoever ran the command, or the daemon for an undock.
3. Otherwise the check-out is recorded as unassigned, never guessed.

A custody period runs from a check-out to the next check-in. A check-out while the camera is already
out re-attributes it: the period goes on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from ingestd.policies.errors import AttributionError
from store.kinds import CustodyKind

OFFICER_NO_MAX = 6  # GA/T 947.4 userNo[6]
DAEMON_ACTOR = "ingestd"

Basis = Literal["named-by-clerk", "assigned-officer", "unassigned"]


@dataclass(frozen=True, slots=True)
class CustodyAttribution:
    officer_no: str | None
    actor: str
    actor_role: Literal["clerk", "daemon"]
    basis: Basis


def _officer_no(value: str, what: str) -> str:
    number = value.strip()
    if not number or len(number) > OFFICER_NO_MAX or not number.isalnum():
        raise AttributionError(detail=f"{what} {value!r} is not an officer number (1-6 letters or digits)")
    return number


def attribute_checkout(
    explicit_officer_no: str | None, clerk_user: str | None, assigned_officer_no: str | None
) -> CustodyAttribution:
    """Attribute a check-out. A named officer needs a named clerk: someone must answer for the naming."""
    actor = clerk_user or DAEMON_ACTOR
    role: Literal["clerk", "daemon"] = "clerk" if clerk_user else "daemon"
    if explicit_officer_no is not None:
        if not clerk_user:
            raise AttributionError(detail="an officer was named but no user is recorded as naming them")
        return CustodyAttribution(
            _officer_no(explicit_officer_no, "--officer"), clerk_user, "clerk", "named-by-clerk"
        )
    # The camera pads userNo with blanks when no officer is written to it.
    if assigned_officer_no is not None and assigned_officer_no.strip():
        number = _officer_no(assigned_officer_no, "assigned officer")
        return CustodyAttribution(number, actor, role, "assigned-officer")
    return CustodyAttribution(None, actor, role, "unassigned")


@dataclass(frozen=True, slots=True)
class CustodyPeriod:
    """A camera out from `checked_out_at` until `checked_in_at` (None: still out)."""

    checked_out_at: datetime
    checked_in_at: datetime | None

    def covers(self, at: datetime) -> bool:
        return self.checked_out_at <= at and (self.checked_in_at is None or at < self.checked_in_at)


def custody_periods(events: Iterable[tuple[CustodyKind, datetime]]) -> list[CustodyPeriod]:
    """A camera's custody periods from its check-ins and check-outs, given in the order they happened."""
    periods: list[CustodyPeriod] = []
    out: datetime | None = None
    for kind, at in events:
        if kind is CustodyKind.CHECK_OUT and out is None:
            out = at
        elif kind is CustodyKind.CHECK_IN and out is not None:
            periods.append(CustodyPeriod(out, at))
            out = None
    if out is not None:
        periods.append(CustodyPeriod(out, None))
    return periods


def checkout_covering(periods: Iterable[CustodyPeriod], at: datetime) -> datetime | None:
    """The check-out instant of the period `at` falls in; None when the camera was not out then."""
    return next((period.checked_out_at for period in periods if period.covers(at)), None)
