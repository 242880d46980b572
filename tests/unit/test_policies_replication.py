"""The replication deadline: one `unreplicated` flag per object past it, none before or at it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ingestd.policies.replication import PendingReplication, evaluate_unreplicated
from store.models import FlagKind
from store.times import NaiveDatetimeError

QUEUED = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
DAY = timedelta(hours=24)


def pending(digest: str, queued: datetime = QUEUED) -> PendingReplication:
    return PendingReplication(digest, queued, "failed", 3, "vault endpoint is unreachable")


def test_only_objects_strictly_past_the_deadline_are_flagged_each_under_its_own_key() -> None:
    items = [pending("a" * 64), pending("b" * 64, QUEUED + timedelta(hours=1))]
    assert evaluate_unreplicated(items, DAY, QUEUED + DAY) == []
    (flag,) = evaluate_unreplicated(items, DAY, QUEUED + DAY + timedelta(seconds=1))
    assert flag.kind is FlagKind.UNREPLICATED
    assert flag.dedup_key == f"unreplicated:{'a' * 64}"
    assert flag.details["due_at"] == (QUEUED + DAY).isoformat()
    assert flag.details["last_error"] == "vault endpoint is unreachable"
    later = evaluate_unreplicated(items, DAY, QUEUED + 2 * DAY)
    assert [f.dedup_key for f in later] == [f"unreplicated:{'a' * 64}", f"unreplicated:{'b' * 64}"]


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(NaiveDatetimeError):
        evaluate_unreplicated([pending("a" * 64)], DAY, datetime(2026, 12, 2))  # noqa: DTZ001 - the point
