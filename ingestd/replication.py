"""The persistent replication queue in the catalog, and the lock each object must have in the vault.

Guarantees:
- Every live stored object has one queue row (`enqueue_object` in the ingest's own transaction, and
  `backfill` at start-up for objects stored before the vault was enabled); enqueueing twice is a no-op.
- A row is `replicated` only once the replicator confirmed size, digests and lock from the server.
- The wanted lock is a pure function of the recordings that reference the object: the latest retention
  date any of them needs, and a legal hold when any is held or long-term. Compliance mode only extends,
  so a downgrade takes effect locally only and the vault copy stays locked until its date.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from ingestd.policies.retention import RetentionRules, expires_at
from ingestd.purge import retention_facts
from store.models import (
    Recording,
    ReplicationItem,
    ReplicationKind,
    ReplicationState,
    RetentionClass,
    StoredObject,
)

# Backoff after the n-th failed attempt: initial * 2**(n-1), at most this.
MAX_BACKOFF = timedelta(hours=1)


@dataclass(frozen=True)
class WantedLock:
    """The lock an object must carry in the vault."""

    retain_until: datetime
    legal_hold: bool


# Joins a stored object to its queue row.
OBJECT_ITEM = and_(
    ReplicationItem.kind == ReplicationKind.OBJECT, ReplicationItem.subject == StoredObject.blake3
)


def enqueue(db: Session, *, kind: ReplicationKind, subject: str, size: int, now: datetime) -> bool:
    """Queue one item unless it is queued already; True when it is new. Call inside the transaction
    that makes it exist, so a crash never leaves a committed object without its row."""
    found = db.scalar(
        select(ReplicationItem.id).where(ReplicationItem.kind == kind, ReplicationItem.subject == subject)
    )
    if found is not None:
        return False
    db.add(
        ReplicationItem(
            kind=kind,
            subject=subject,
            size=size,
            state=ReplicationState.PENDING,
            attempts=0,
            enqueued_at=now,
            next_attempt_at=now,
            parts=[],
            legal_hold=False,
        )
    )
    db.flush()
    return True


def enqueue_object(db: Session, *, blake3: str, size: int, now: datetime) -> bool:
    return enqueue(db, kind=ReplicationKind.OBJECT, subject=blake3, size=size, now=now)


def backfill(db: Session, now: datetime) -> int:
    """Queue every live stored object that has no row yet (stored before replication was enabled)."""
    missing = db.execute(
        select(StoredObject.blake3, StoredObject.size)
        .outerjoin(ReplicationItem, OBJECT_ITEM)
        .where(StoredObject.removed_at.is_(None), ReplicationItem.id.is_(None))
        .order_by(StoredObject.stored_at, StoredObject.blake3)
    ).all()
    for blake3, size in missing:
        enqueue_object(db, blake3=blake3, size=size, now=now)
    return len(missing)


def due(db: Session, now: datetime, *, limit: int, ignore_backoff: bool = False) -> list[ReplicationItem]:
    """Rows not yet replicated whose next attempt is due (all of them with `ignore_backoff`), oldest
    first. `uploading` rows are due too: the process that was sending them is gone."""
    query = select(ReplicationItem).where(ReplicationItem.state != ReplicationState.REPLICATED)
    if not ignore_backoff:
        query = query.where(ReplicationItem.next_attempt_at <= now)
    query = query.order_by(ReplicationItem.next_attempt_at, ReplicationItem.id).limit(limit)
    return list(db.scalars(query).all())


def backoff(attempts: int, initial: timedelta) -> timedelta:
    """How long to wait after the `attempts`-th failure."""
    wait: timedelta = initial * (2 ** max(attempts - 1, 0))
    return min(wait, MAX_BACKOFF)


def wanted_lock(recordings: Iterable[Recording], rules: RetentionRules, stored_at: datetime) -> WantedLock:
    """The latest date any live referencing recording needs, and a hold when one is held or long-term.
    Long-term has no end date, so it is held and dated as standard (the hold keeps it past that)."""
    until: datetime | None = None
    hold = False
    for recording in recordings:
        facts = retention_facts(recording)
        date = expires_at(facts, rules)
        if date is None:  # long-term
            hold = True
            date = expires_at(replace(facts, assigned_class=RetentionClass.STANDARD, tags=frozenset()), rules)
        hold = hold or recording.legal_hold
        assert date is not None  # noqa: S101 - standard always has a date
        until = date if until is None else max(until, date)
    if until is None:  # no live recording (an object kept as evidence of a purge race): routine
        until = stored_at + timedelta(days=31 * rules.routine_months)
    return WantedLock(retain_until=whole_second_after(until), legal_hold=hold)


def whole_second_after(value: datetime) -> datetime:
    """`value` rounded up to a whole second: S3 lock dates are compared at that precision, and a
    minimum period must never be rounded down."""
    whole = value.replace(microsecond=0)
    return whole if whole == value else whole + timedelta(seconds=1)


def wanted_lock_for(db: Session, blake3: str, rules: RetentionRules) -> WantedLock:
    stored = db.get(StoredObject, blake3)
    if stored is None:
        raise LookupError(f"no stored object {blake3}")
    live = db.scalars(
        select(Recording).where(Recording.blake3 == blake3, Recording.purged_at.is_(None))
    ).all()
    return wanted_lock(live, rules, stored.stored_at)


@dataclass(frozen=True)
class QueueSummary:
    counts: dict[str, int]
    oldest_pending_at: datetime | None
    last_error: str | None
    last_error_subject: str | None
    replicated_bytes: int
    # Bytes replicated within the last THROUGHPUT_WINDOW, per second of that window.
    recent_bytes_per_s: float
    # Live objects whose local copy was evicted (read back from the vault), and their bytes.
    evicted_objects: int = 0
    evicted_bytes: int = 0


THROUGHPUT_WINDOW = timedelta(hours=1)


def evicted_totals(db: Session) -> tuple[int, int]:
    """How many live objects were evicted locally (held in the vault only), and their bytes."""
    count, size = db.execute(
        select(func.count(), func.coalesce(func.sum(StoredObject.size), 0)).where(
            StoredObject.evicted_at.is_not(None), StoredObject.removed_at.is_(None)
        )
    ).one()
    return int(count), int(size)


def summary(db: Session, now: datetime | None = None) -> QueueSummary:
    """Counts per state, the oldest item not yet replicated, the most recent error, and (with `now`)
    the rate over the last hour, all from the catalog, so every reader agrees."""
    counts = Counter({state.value: 0 for state in ReplicationState})
    for state, count in db.execute(
        select(ReplicationItem.state, func.count()).group_by(ReplicationItem.state)
    ).all():
        counts[ReplicationState(state).value] = count
    oldest = db.scalar(
        select(func.min(ReplicationItem.enqueued_at)).where(
            ReplicationItem.state != ReplicationState.REPLICATED
        )
    )
    failing = db.execute(
        select(ReplicationItem.last_error, ReplicationItem.subject)
        .where(ReplicationItem.last_error.is_not(None))
        .order_by(ReplicationItem.next_attempt_at.desc())
        .limit(1)
    ).first()
    replicated_bytes = db.scalar(
        select(func.coalesce(func.sum(ReplicationItem.size), 0)).where(
            ReplicationItem.state == ReplicationState.REPLICATED
        )
    )
    recent = 0
    if now is not None:
        recent = (
            db.scalar(
                select(func.coalesce(func.sum(ReplicationItem.size), 0)).where(
                    ReplicationItem.state == ReplicationState.REPLICATED,
                    ReplicationItem.replicated_at > now - THROUGHPUT_WINDOW,
                )
            )
            or 0
        )
    evicted, evicted_bytes = evicted_totals(db)
    return QueueSummary(
        evicted_objects=evicted,
        evicted_bytes=evicted_bytes,
        counts=dict(counts),
        oldest_pending_at=oldest,
        last_error=failing[0] if failing else None,
        last_error_subject=failing[1] if failing else None,
        replicated_bytes=int(replicated_bytes or 0),
        recent_bytes_per_s=int(recent) / THROUGHPUT_WINDOW.total_seconds(),
    )


def view(db: Session, *, enabled: bool, bucket: str, endpoint: str, now: datetime) -> dict[str, Any]:
    """What `ingestctl replication` shows, as JSON-safe values."""
    queued = summary(db, now)
    oldest = queued.oldest_pending_at
    return {
        "enabled": enabled,
        "bucket": bucket or None,
        "endpoint": endpoint or None,
        "counts": queued.counts,
        "oldest_pending_at": oldest.isoformat() if oldest else None,
        "oldest_pending_age_s": (now - oldest).total_seconds() if oldest else None,
        "replicated_bytes": queued.replicated_bytes,
        "bytes_per_s_last_hour": queued.recent_bytes_per_s,
        "last_error": queued.last_error,
        "last_error_subject": queued.last_error_subject,
        "evicted": {"objects": queued.evicted_objects, "bytes": queued.evicted_bytes},
    }


def evicted_digests(db: Session, digests: Iterable[str]) -> set[str]:
    """Which of these objects were evicted locally (held in the vault only)."""
    wanted = set(digests)
    if not wanted:
        return set()
    return set(
        db.scalars(
            select(StoredObject.blake3).where(
                StoredObject.blake3.in_(wanted), StoredObject.evicted_at.is_not(None)
            )
        ).all()
    )


def vault_states(db: Session, digests: Iterable[str]) -> dict[str, str]:
    """Each object's replication state by BLAKE3 (absent: not queued)."""
    wanted = set(digests)
    if not wanted:
        return {}
    rows = db.execute(
        select(ReplicationItem.subject, ReplicationItem.state).where(
            ReplicationItem.kind == ReplicationKind.OBJECT, ReplicationItem.subject.in_(wanted)
        )
    ).all()
    return {subject: ReplicationState(state).value for subject, state in rows}
