"""The retention purge executor: with vault eviction (`ingestd.eviction`), the only code that removes a
stored object.

It gathers the facts from the catalog, asks `policies.retention.plan_purge` what to do, and either
reports the plan (dry run) or carries it out. Both runs gather and plan with the same function, so a
dry run at an instant shows exactly what a real run at that instant does.

Order of a real run, per object, each step its own committed transaction:

1. the audit event `retention.purge` (outcome "started") commits *together with* the recordings
   becoming tombstones (`purged_at`), after the hold, class and notice have been checked again under
   the row locks: from then on no hold can be placed on them, and the intent is on record before any
   byte goes;
2. `store.remove(blake3)`;
3. `retention.remove` (outcome "ok", "absent" or "failed") with the object row's `removed_at`; steps 2
   and 3 hold the object row's lock and first check again that no live recording references the object
   (an ingest may have deduplicated into it since step 1: then the bytes stay, outcome "skipped").

Recording and object rows are kept as tombstones, never deleted: an auditor can still see what was
stored, its digests, when it was ingested and when and by whom it was purged, and the audit events'
subjects still resolve. A failed or interrupted removal leaves no row pointing at missing bytes: the
object row is marked removed only after the bytes are gone, and the next run retries the removal of
every object whose recordings are all tombstones ("pending").
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from ingestd.policies.retention import (
    KeepReason,
    PurgePlan,
    RetentionFacts,
    RetentionRules,
    plan_purge,
)
from store.audit import Actor, AuditLog
from store.catalog import Catalog
from store.errors import IntegrityError, ObjectMissing, StoreError
from store.models import Recording, StoredObject
from store.objects import ObjectStore
from store.times import iso

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PurgeReport:
    """The plan, and for a real run what was done. `pending_objects` are objects whose recordings were
    all purged by an earlier run that could not remove the bytes; this run removes them."""

    at: datetime
    dry_run: bool
    plan: PurgePlan
    pending_objects: tuple[str, ...]
    noticed: tuple[int, ...] = ()
    purged_recordings: tuple[int, ...] = ()
    removed_objects: tuple[str, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)  # subject -> why it was not touched
    failed_objects: dict[str, str] = field(default_factory=dict)  # blake3 -> error

    @property
    def ok(self) -> bool:
        return not self.failed_objects

    def as_json(self) -> dict[str, Any]:
        plan = self.plan
        counts: dict[str, int] = defaultdict(int)
        for kept in plan.kept:
            counts[kept.reason.value] += 1
        return {
            "at": iso(self.at),
            "dry_run": self.dry_run,
            "notices": [
                {
                    "recording_id": n.recording_id,
                    "blake3": n.blake3,
                    "expires_at": iso(n.expires_at),
                    "delete_not_before": iso(n.delete_not_before),
                }
                for n in plan.notices
            ],
            "deletable_recordings": list(plan.deletable_recordings),
            "deletable_objects": list(plan.deletable_objects),
            "pending_objects": list(self.pending_objects),
            "kept_counts": dict(sorted(counts.items())),
            # Not-yet-due recordings are the bulk of the catalog: counted, not listed.
            "kept": [
                {"recording_id": k.recording_id, "reason": k.reason.value, "detail": k.detail}
                for k in plan.kept
                if k.reason is not KeepReason.NOT_DUE
            ],
            "kept_objects": [
                {"blake3": k.blake3, "reason": k.reason.value, "referenced_by": list(k.referenced_by)}
                for k in plan.kept_objects
            ],
            "done": None
            if self.dry_run
            else {
                "noticed": list(self.noticed),
                "purged_recordings": list(self.purged_recordings),
                "removed_objects": list(self.removed_objects),
                "skipped": self.skipped,
                "failed_objects": self.failed_objects,
            },
        }


def retention_facts(recording: Recording) -> RetentionFacts:
    """The facts the retention policy decides on, read from one catalog row."""
    return RetentionFacts(
        recording_id=recording.id,
        blake3=recording.blake3,
        stored_at=recording.ingested_at,
        assigned_class=recording.retention_class,
        tags=frozenset(recording.retention_tags or ()),
        legal_hold=recording.legal_hold,
        notice_given_at=recording.purge_notice_at,
    )


def gather(db: Session, rules: RetentionRules, now: datetime) -> tuple[PurgePlan, tuple[str, ...]]:
    """Plan from every live recording (tombstones are neither candidates nor references) and list the
    pending objects. Shared by the dry run, the real run and the notice job."""
    live = db.scalars(select(Recording).where(Recording.purged_at.is_(None))).all()
    references: dict[str, list[int]] = defaultdict(list)
    for recording in live:
        references[recording.blake3].append(recording.id)
    plan = plan_purge([retention_facts(r) for r in live], references, now, rules)
    purged_digests = select(Recording.blake3).where(Recording.purged_at.is_not(None))
    live_digests = select(Recording.blake3).where(Recording.purged_at.is_(None))
    pending = db.scalars(
        select(StoredObject.blake3)
        .where(
            StoredObject.removed_at.is_(None),
            StoredObject.blake3.in_(purged_digests),
            StoredObject.blake3.not_in(live_digests),
        )
        .order_by(StoredObject.blake3)
    ).all()
    return plan, tuple(pending)


def give_notices(
    catalog: Catalog, audit: AuditLog, *, actor: Actor, now: datetime, rules: RetentionRules
) -> list[int]:
    """Record the deletion notices the plan asks for (one audit event each); returns the recordings."""
    with catalog.transaction() as db:
        plan, _pending = gather(db, rules, now)
        return _record_notices(db, audit, plan, actor=actor, now=now)


def _record_notices(
    db: Session, audit: AuditLog, plan: PurgePlan, *, actor: Actor, now: datetime
) -> list[int]:
    noticed: list[int] = []
    for notice in plan.notices:
        recording = db.get_one(Recording, notice.recording_id, with_for_update=True, populate_existing=True)
        # Another process (the daemon's notice job, a second purge) may have got here first, or a hold.
        if recording.purge_notice_at is not None or recording.legal_hold or recording.purged_at is not None:
            continue
        recording.purge_notice_at = now
        db.flush()
        audit.append(
            db,
            actor=actor,
            action="retention.notice",
            subject=f"recording:{recording.id}",
            at=now,
            details={
                "blake3": notice.blake3,
                "expires_at": iso(notice.expires_at),
                "delete_not_before": iso(notice.delete_not_before),
            },
        )
        log.info(
            "retention_notice",
            recording_id=recording.id,
            digest=notice.blake3,
            delete_not_before=iso(notice.delete_not_before),
        )
        noticed.append(recording.id)
    return noticed


def _still_deletable(recordings: list[Recording], rules: RetentionRules, now: datetime) -> str | None:
    """Ask the policy again under the row locks: a hold, a tag or a purge may have come in meanwhile."""
    for recording in recordings:
        if recording.purged_at is not None:
            return f"recording {recording.id} was purged meanwhile"
        plan = plan_purge([retention_facts(recording)], {recording.blake3: [recording.id]}, now, rules)
        if recording.id not in plan.deletable_recordings:
            reason = plan.kept[0].reason.value if plan.kept else "not deletable"
            return f"recording {recording.id} is no longer deletable ({reason})"
    return None


def purge(
    catalog: Catalog,
    store: ObjectStore,
    audit: AuditLog,
    *,
    actor: Actor,
    now: datetime,
    rules: RetentionRules,
    dry_run: bool,
) -> PurgeReport:
    """Plan, and unless `dry_run`, give the notices, purge what is deletable and remove its objects."""
    with catalog.transaction() as db:
        plan, pending = gather(db, rules, now)
        if dry_run:
            return PurgeReport(at=now, dry_run=True, plan=plan, pending_objects=pending)
        noticed = _record_notices(db, audit, plan, actor=actor, now=now)
        by_object: dict[str, list[int]] = defaultdict(list)
        for recording_id in plan.deletable_recordings:
            by_object[db.get_one(Recording, recording_id).blake3].append(recording_id)

    run = _Run(catalog, store, audit, actor, now, rules)
    # Recordings whose object another live recording still needs: tombstone only, the bytes stay.
    for kept in plan.kept_objects:
        for recording_id in by_object[kept.blake3]:
            run.tombstone([recording_id], None)
    for digest in plan.deletable_objects:
        if run.tombstone(by_object[digest], digest):
            run.remove(digest)
    for digest in pending:
        if digest not in plan.deletable_objects:
            run.remove(digest)
    return PurgeReport(
        at=now,
        dry_run=False,
        plan=plan,
        pending_objects=pending,
        noticed=tuple(noticed),
        purged_recordings=tuple(sorted(run.purged)),
        removed_objects=tuple(sorted(run.removed)),
        skipped=run.skipped,
        failed_objects=run.failed,
    )


@dataclass
class _Run:
    """One real run's context and what it has done so far."""

    catalog: Catalog
    store: ObjectStore
    audit: AuditLog
    actor: Actor
    now: datetime
    rules: RetentionRules
    purged: list[int] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def tombstone(self, recording_ids: list[int], digest: str | None) -> bool:
        """Step 1: check again, audit and tombstone in one transaction. `digest` names the object removed
        next; None means the object stays (another live recording still references it)."""
        subject = f"object:{digest}" if digest else f"recording:{recording_ids[0]}"
        with self.catalog.transaction() as db:
            recordings = list(
                db.scalars(
                    select(Recording)
                    .where(Recording.id.in_(recording_ids))
                    .order_by(Recording.id)
                    .with_for_update()
                ).all()
            )
            why_not = _still_deletable(recordings, self.rules, self.now)
            if digest is not None and why_not is None:
                live = set(_live_references(db, digest))
                if live != set(recording_ids):
                    why_not = f"object is now referenced by recording(s) {sorted(live - set(recording_ids))}"
            if why_not is not None:
                self.skipped[subject] = why_not
                log.warning("purge_skipped", subject=subject, reason=why_not)
                return False
            for recording in recordings:
                recording.purged_at = self.now
            db.flush()
            details: dict[str, Any] = {
                "recordings": recording_ids,
                "notices": {str(r.id): iso(r.purge_notice_at) for r in recordings if r.purge_notice_at},
                "stored_at": {str(r.id): iso(r.ingested_at) for r in recordings},
                "classes": {str(r.id): r.retention_class.value for r in recordings},
            }
            if digest is None:
                details["blake3"] = recordings[0].blake3
                details["object"] = "kept: still referenced by a live recording"
            else:
                stored = db.get_one(StoredObject, digest)
                details.update(sha256=stored.sha256, size=stored.size)
            self.audit.append(
                db,
                actor=self.actor,
                action="retention.purge",
                subject=subject,
                at=self.now,
                outcome="ok" if digest is None else "started",
                details=details,
            )
        self.purged.extend(recording_ids)
        log.info("recordings_purged", subject=subject, recordings=recording_ids, digest=digest)
        return True

    def remove(self, digest: str) -> bool:
        """Steps 2 and 3, in one transaction holding the object row's lock; the intent is already on
        record. An ingest that deduplicated into this object commits its recording under the same lock:
        either it came first and the bytes stay, or it finds them gone and stores them again."""
        try:
            with self.catalog.transaction() as db:
                stored = db.get_one(StoredObject, digest, with_for_update=True, populate_existing=True)
                live = _live_references(db, digest)
                if live:
                    # A recording took the object after its tombstone step: the bytes stay, on record.
                    why = f"object is now referenced by recording(s) {live}"
                    self.skipped[f"object:{digest}"] = why
                    log.warning("purge_skipped", subject=f"object:{digest}", reason=why)
                    self._audit_removal(db, digest, "skipped", {"referenced_by": live})
                    return False
                outcome, detail = "ok", "removed"
                if stored.evicted_at is not None and not self.store.exists(digest):
                    # Only the vault holds it: compliance mode keeps that copy until its own date. (An
                    # eviction a crash cut left the bytes here: they go like any other's.)
                    outcome, detail = "absent", "evicted earlier: the vault copy stays until its lock date"
                else:
                    try:
                        self.store.remove(digest)
                    except ObjectMissing:
                        outcome = "absent"
                        detail = "the bytes were already gone (an earlier run removed them)"
                stored.removed_at = self.now
                db.flush()
                self._audit_removal(db, digest, outcome, {"detail": detail})
        except IntegrityError:
            raise  # never swallowed
        except (StoreError, OSError) as error:
            self.failed[digest] = str(error)
            log.error("purge_remove_failed", digest=digest, error=str(error))  # noqa: TRY400 - an expected failure, not a bug
            with self.catalog.transaction() as db:
                self._audit_removal(db, digest, "failed", {"error": str(error)})
            return False
        self.removed.append(digest)
        log.info("object_purged", digest=digest, outcome=outcome)
        return True

    def _audit_removal(self, db: Session, digest: str, outcome: str, details: dict[str, Any]) -> None:
        self.audit.append(
            db,
            actor=self.actor,
            action="retention.remove",
            subject=f"object:{digest}",
            at=self.now,
            outcome=outcome,
            details=details,
        )


def _live_references(db: Session, digest: str) -> list[int]:
    """The recordings, not purged, that need this object's bytes."""
    return list(
        db.scalars(
            select(Recording.id)
            .where(Recording.blake3 == digest, Recording.purged_at.is_(None))
            .order_by(Recording.id)
        ).all()
    )
