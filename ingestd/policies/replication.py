"""When an object's absence from the vault needs a person: the replication deadline.

An object must be replicated and verified within `deadline` of being queued (when it was stored, or
when the vault was enabled for objects stored before). Past it, one `unreplicated` flag per object.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ingestd.policies.flags import FlagDecision
from store.kinds import FlagKind
from store.times import iso, utc


@dataclass(frozen=True, slots=True)
class PendingReplication:
    """An object not yet replicated and verified, as the queue holds it."""

    blake3: str
    enqueued_at: datetime
    state: str
    attempts: int
    last_error: str | None


def evaluate_unreplicated(
    items: Iterable[PendingReplication], deadline: timedelta, now: datetime
) -> list[FlagDecision]:
    """One flag per object still not replicated `deadline` after it was queued (strictly after)."""
    now = utc(now, "now")
    return [
        FlagDecision(
            kind=FlagKind.UNREPLICATED,
            dedup_key=f"{FlagKind.UNREPLICATED.value}:{item.blake3}",
            raised_at=now,
            details={
                "blake3": item.blake3,
                "queued_at": iso(item.enqueued_at),
                "due_at": iso(item.enqueued_at + deadline),
                "state": item.state,
                "attempts": item.attempts,
                "last_error": item.last_error,
            },
        )
        for item in items
        if now - utc(item.enqueued_at, "enqueued_at") > deadline
    ]
