"""Local eviction: the store is a buffer, the vault the archive.

When the store's filesystem is fuller than `vault.evict_high_water_percent`, the oldest objects are
removed locally until it is `vault.evict_low_water_percent` full. An object goes only when all of this
holds, each checked again right before it goes:
- its queue row is `replicated` (size, both digests and the compliance lock were confirmed from the
  server) and its last scrub did not fail; an object with no vault copy is never a candidate;
- its vault copy was put or scrubbed within `vault.evict_confirmed_within_hours`; an older one is read
  back whole from the vault (both digests and the size, like a scrub, recorded on its row) first;
- the server confirms now that the confirmed version is still the newest, with the same size and
  digests, locked in COMPLIANCE mode at least until the date the catalog wants (and under legal hold
  when the catalog wants one): a copy whose lock falls short waits for the replicator's lock sync;
- nothing in this process is reading it (`Services.in_use`).

Each eviction is audited (`store.evict`) together with the row's `evicted_at`, committed BEFORE the
bytes go; then the store's one removal primitive removes them. A removal that fails is audited and the
row is live locally again (unless the bytes went before the error: then it stays evicted, audited
`gone`); one cut by a crash is finished by the next run, if the chain, the queue and the vault still
vouch for it (the intent is on record).
Besides the retention purge this is the only path that removes a local object. Dry runs plan with the
same candidates and checks but touch neither the vault nor the disk.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from ingestd import replication, vault_scrub
from ingestd.audit_anchor import AnchorProblem
from ingestd.services import Services, StationReader
from store.audit import Actor
from store.crashpoints import Step, crash_point
from store.errors import IntegrityError, ObjectMissing, StoreError
from store.models import AuditEvent, ReplicationItem, ReplicationState, StoredObject
from store.times import iso
from store.vault import Vault, VaultIntegrityError, VaultObjectMissingError, object_key

log = structlog.get_logger(__name__)

ACTION = "store.evict"
# The bytes of an evicted object stored again from a camera that still held them: local again.
RESTORE_ACTION = "store.restore"
INGEST_ACTION = "recording.ingest"
ACTOR = Actor.system(source="eviction")


def evicted_at_on_record(db: Session, blake3: str | None = None) -> dict[str, datetime | None]:
    """Each object's `evicted_at` as its events leave it, replayed in chain order (of `blake3` only,
    when given): `store.evict` ok sets it; a failed one, a `store.restore` or an ingest of the same
    bytes clears it. An object no event touches is absent."""
    query = select(
        AuditEvent.action, AuditEvent.subject, AuditEvent.outcome, AuditEvent.at, AuditEvent.details
    )
    if blake3 is None:
        query = query.where(AuditEvent.action.in_((ACTION, RESTORE_ACTION, INGEST_ACTION)))
    else:
        query = query.where(
            or_(
                and_(
                    AuditEvent.action.in_((ACTION, RESTORE_ACTION)), AuditEvent.subject == f"object:{blake3}"
                ),
                and_(AuditEvent.action == INGEST_ACTION, AuditEvent.details["blake3"].as_string() == blake3),
            )
        )
    replayed: dict[str, datetime | None] = {}
    for action, subject, outcome, at, details in db.execute(query.order_by(AuditEvent.seq)).all():
        if action == INGEST_ACTION:
            digest = details.get("blake3")
            if isinstance(digest, str):
                replayed[digest] = None
            continue
        digest = subject.removeprefix("object:")
        if action == ACTION and outcome == "ok":
            replayed[digest] = at
        elif action == RESTORE_ACTION or outcome == "failed":
            replayed[digest] = None
    return replayed


@dataclass(frozen=True)
class Usage:
    """The store's filesystem: bytes in use and bytes still available (as `df` counts them)."""

    used: int
    available: int

    @property
    def percent(self) -> float:
        total = self.used + self.available
        return 100.0 * self.used / total if total else 0.0

    def bytes_at(self, percent: int) -> int:
        return (self.used + self.available) * percent // 100


def store_usage(services: Services) -> Usage:
    found = shutil.disk_usage(services.config.store.root)
    return Usage(used=found.used, available=found.free)


@dataclass(frozen=True)
class _Candidate:
    item_id: int
    blake3: str
    sha256: str
    size: int
    stored_at: datetime
    version_id: str | None
    confirmed_at: datetime | None  # the later of the put's confirmation and the last scrub
    scrub_error: str | None


@dataclass
class EvictionReport:
    at: datetime
    dry_run: bool
    high_water_percent: int
    low_water_percent: int
    before: Usage
    after: Usage | None = None
    to_free: int = 0
    evicted: list[str] = field(default_factory=list)  # planned, on a dry run
    freed_bytes: int = 0
    read_back: list[str] = field(default_factory=list)  # confirmations renewed (or due, on a dry run)
    kept: dict[str, str] = field(default_factory=dict)  # blake3 -> why it stays
    failed: dict[str, str] = field(default_factory=dict)  # blake3 -> removal error
    finished: list[str] = field(default_factory=list)  # removals a crash had cut, done now

    @property
    def above_high_water(self) -> bool:
        usage = self.after or self.before
        return usage.percent > self.high_water_percent and not self.dry_run

    def as_json(self) -> dict[str, Any]:
        def usage(value: Usage | None) -> dict[str, Any] | None:
            if value is None:
                return None
            return {"used": value.used, "available": value.available, "percent": round(value.percent, 2)}

        return {
            "at": iso(self.at),
            "dry_run": self.dry_run,
            "high_water_percent": self.high_water_percent,
            "low_water_percent": self.low_water_percent,
            "before": usage(self.before),
            "after": usage(self.after),
            "to_free": self.to_free,
            "evicted": self.evicted,
            "freed_bytes": self.freed_bytes,
            "read_back": self.read_back,
            "kept": self.kept,
            "failed": self.failed,
            "finished": self.finished,
        }


def _candidates(services: Services) -> list[_Candidate]:
    """Replicated objects still held locally, oldest first."""
    with services.catalog.transaction() as db:
        rows = db.execute(
            select(StoredObject, ReplicationItem)
            .join(ReplicationItem, replication.OBJECT_ITEM)
            .where(
                StoredObject.removed_at.is_(None),
                StoredObject.evicted_at.is_(None),
                ReplicationItem.state == ReplicationState.REPLICATED,
            )
            .order_by(StoredObject.stored_at, StoredObject.blake3)
        ).all()
        return [
            _Candidate(
                item_id=item.id,
                blake3=stored.blake3,
                sha256=stored.sha256,
                size=stored.size,
                stored_at=stored.stored_at,
                version_id=item.version_id,
                confirmed_at=max((t for t in (item.replicated_at, item.scrubbed_at) if t), default=None),
                scrub_error=item.scrub_error,
            )
            for stored, item in rows
        ]


class _Run:
    """One eviction run's context."""

    def __init__(self, services: Services, vault: Vault, report: EvictionReport) -> None:
        self.services = services
        self.vault = vault
        self.report = report
        self.now = report.at
        self.rules = services.config.retention.rules()
        self.fresh_after = self.now - timedelta(hours=services.config.vault.evict_confirmed_within_hours)

    def why_not(self, candidate: _Candidate) -> str | None:
        """Why `candidate` must stay, asked of the catalog and (unless a dry run) the server."""
        if candidate.scrub_error is not None:
            return f"its last scrub failed: {candidate.scrub_error}"
        if candidate.blake3 in self.services.in_use:
            return "it is being read (a copy, an export or a viewing)"
        stale = candidate.confirmed_at is None or candidate.confirmed_at < self.fresh_after
        if self.report.dry_run:
            if stale:
                self.report.read_back.append(candidate.blake3)
            return None
        with self.services.catalog.transaction() as db:
            wanted = replication.wanted_lock_for(db, candidate.blake3, self.rules)
        try:
            found = self.vault.confirm(
                candidate.blake3,
                sha256_hex=candidate.sha256,
                size=candidate.size,
                retain_until=wanted.retain_until,
                version_id=candidate.version_id,
            )
        except (VaultIntegrityError, VaultObjectMissingError) as differs:
            return f"the vault does not confirm it: {differs}"
        shadow = shadowed(self.vault, candidate.blake3, candidate.version_id)
        if shadow is not None:
            return shadow
        if wanted.legal_hold and not found.legal_hold:
            return "the catalog wants a legal hold the vault copy does not have yet"
        if stale:
            error = vault_scrub.read_back(
                self.vault,
                candidate.blake3,
                version_id=candidate.version_id,
                sha256=candidate.sha256,
                size=candidate.size,
            )
            vault_scrub.record(self.services, candidate.item_id, now=self.now, error=error)
            self.report.read_back.append(candidate.blake3)
            if error is not None:
                return f"reading it back from the vault failed: {error}"
        return None

    def evict(self, candidate: _Candidate) -> bool:
        """Audit and mark under the object row's lock, commit, then remove the bytes."""
        services = self.services
        with services.catalog.transaction() as db:
            stored = db.get_one(StoredObject, candidate.blake3, with_for_update=True, populate_existing=True)
            item = db.get_one(ReplicationItem, candidate.item_id, populate_existing=True)
            if stored.removed_at is not None or stored.evicted_at is not None:
                return False  # the purge or another run got here first
            if item.state is not ReplicationState.REPLICATED or item.scrub_error is not None:
                self.report.kept[candidate.blake3] = "its vault state changed meanwhile"
                return False
            stored.evicted_at = self.now
            db.flush()
            self.audit(
                db,
                candidate.blake3,
                "ok",
                {
                    "sha256": stored.sha256,
                    "size": stored.size,
                    "stored_at": iso(stored.stored_at),
                    "bucket": self.vault.settings.bucket,
                    "key": object_key(candidate.blake3),
                    "version_id": item.version_id,
                    "retain_until": iso(item.retain_until) if item.retain_until else None,
                    "store_percent": round(self.report.before.percent, 2),
                },
            )
        crash_point(Step.EVICT_COMMIT)
        return self.remove(candidate.blake3)

    def audit(self, db: Session, blake3: str, outcome: str, details: dict[str, Any]) -> None:
        self.services.audit.append(
            db,
            actor=ACTOR,
            action=ACTION,
            subject=f"object:{blake3}",
            at=self.now,
            outcome=outcome,
            details=details,
        )

    def remove(self, blake3: str) -> bool:
        """The bytes of an object whose eviction is on record, under its row lock (an ingest that brings
        the same bytes back commits under the same lock and clears `evicted_at`)."""
        services = self.services
        try:
            with services.catalog.transaction() as db:
                stored = db.get_one(StoredObject, blake3, with_for_update=True, populate_existing=True)
                if stored.evicted_at is None:
                    return False
                services.store.remove(blake3)
        except ObjectMissing:
            log.warning("evicted_object_already_absent", digest=blake3)
            return True
        except IntegrityError:
            raise  # never swallowed
        except (StoreError, OSError) as error:
            self.report.failed[blake3] = str(error)
            log.error("eviction_failed", digest=blake3, error=str(error))  # noqa: TRY400 - an expected failure, not a bug
            with services.catalog.transaction() as db:
                stored = db.get_one(StoredObject, blake3, with_for_update=True, populate_existing=True)
                if self._still_local(blake3):
                    stored.evicted_at = None  # the local copy stays the one to read
                    self.audit(db, blake3, "failed", {"error": str(error)})
                else:
                    # The error came after the unlink: evicted it stays, the vault copy is the one read.
                    self.audit(db, blake3, "gone", {"error": str(error)})
            return False
        log.info("object_evicted", digest=blake3)
        return True

    def _still_local(self, blake3: str) -> bool:
        try:
            return self.services.store.exists(blake3)
        except (StoreError, OSError):
            return False  # unknown: the row stays evicted (the vault copy was confirmed just now)

    def finish_cut_removals(self) -> None:
        """Objects marked evicted whose bytes a crash left behind: remove them now, but only those
        whose eviction the chain, the queue and the vault all still vouch for (a catalog writer can set
        `evicted_at`; the chain and the vault it cannot)."""
        with self.services.catalog.transaction() as db:
            marked = db.scalars(
                select(StoredObject.blake3).where(
                    StoredObject.evicted_at.is_not(None), StoredObject.removed_at.is_(None)
                )
            ).all()
        for blake3 in marked:
            if not self.services.store.exists(blake3) or blake3 in self.services.in_use:
                continue
            why = self.why_not_finish(blake3)
            if why is not None:
                self.report.kept[blake3] = why
                log.error("evicted_object_kept", digest=blake3, reason=why)
                continue
            if self.remove(blake3):
                self.report.finished.append(blake3)
                with self.services.catalog.transaction() as db:
                    self.audit(db, blake3, "finished", {"detail": "a removal a crash had cut"})

    def why_not_finish(self, blake3: str) -> str | None:
        """Why the local bytes of an object marked evicted must stay."""
        with self.services.catalog.transaction() as db:
            stored = db.get_one(StoredObject, blake3)
            item = db.scalar(
                select(ReplicationItem)
                .join(StoredObject, replication.OBJECT_ITEM)
                .where(StoredObject.blake3 == blake3)
            )
            on_record = evicted_at_on_record(db, blake3).get(blake3)
        if on_record != stored.evicted_at:
            return (
                f"marked evicted at {iso(stored.evicted_at) if stored.evicted_at else '-'}, but the "
                f"audit chain leaves it {'evicted at ' + iso(on_record) if on_record else 'local'}"
            )
        if item is None or item.state is not ReplicationState.REPLICATED or not item.version_id:
            return "its vault copy is not confirmed (the queue row is not replicated)"
        if item.scrub_error is not None:
            return f"its last scrub failed: {item.scrub_error}"
        try:
            self.vault.confirm(blake3, sha256_hex=stored.sha256, size=stored.size, version_id=item.version_id)
        except (VaultIntegrityError, VaultObjectMissingError) as differs:
            return f"the vault does not confirm version {item.version_id}: {differs}"
        return None


def evict(
    services: Services,
    vault: Vault,
    *,
    now: datetime,
    dry_run: bool,
    usage: Callable[[], Usage] | None = None,
    finish_cut: bool = True,
) -> EvictionReport:
    """Evict the oldest objects the vault holds until the store is at the low-water mark (plan only,
    with `dry_run`). With `finish_cut`, first remove the bytes of evictions a crash cut (one look at
    every evicted object: the daemon does it once per start). Raises `VaultError` when the vault
    cannot be asked: nothing goes unconfirmed."""
    measure = usage or (lambda: store_usage(services))
    settings = services.config.vault
    report = EvictionReport(
        at=now,
        dry_run=dry_run,
        high_water_percent=settings.evict_high_water_percent,
        low_water_percent=settings.evict_low_water_percent,
        before=measure(),
    )
    run = _Run(services, vault, report)
    if finish_cut and not dry_run:
        run.finish_cut_removals()
    if not settings.evict_high_water_percent or report.before.percent <= settings.evict_high_water_percent:
        return report
    report.to_free = report.before.used - report.before.bytes_at(settings.evict_low_water_percent)
    for candidate in _candidates(services):
        if report.freed_bytes >= report.to_free:
            break
        why = run.why_not(candidate)
        if why is not None:
            report.kept[candidate.blake3] = why
            log.warning("eviction_skipped", digest=candidate.blake3, reason=why)
            continue
        if dry_run or run.evict(candidate):
            report.evicted.append(candidate.blake3)
            report.freed_bytes += candidate.size
    if not dry_run:
        report.after = measure()
    return report


def check_evicted_in_vault(services: Services | StationReader, vault: Vault) -> list[AnchorProblem]:
    """For `verify --vault`: each evicted object's confirmed version is still in the vault with its
    size and digests, locked in COMPLIANCE mode, and the newest under its key (a metadata check from
    the server; `ingestd vault scrub` reads the bytes)."""
    with services.catalog.transaction() as db:
        rows = db.execute(
            select(StoredObject, ReplicationItem.version_id)
            .outerjoin(ReplicationItem, replication.OBJECT_ITEM)
            .where(StoredObject.evicted_at.is_not(None), StoredObject.removed_at.is_(None))
            .order_by(StoredObject.blake3)
        ).all()
    problems: list[AnchorProblem] = []
    for stored, version_id in rows:
        key = object_key(stored.blake3)
        try:
            vault.confirm(stored.blake3, sha256_hex=stored.sha256, size=stored.size, version_id=version_id)
        except VaultObjectMissingError:
            problems.append(AnchorProblem("evicted-object-missing", key, "the only copy is not in the vault"))
            continue
        except VaultIntegrityError as differs:
            problems.append(AnchorProblem("evicted-object-differs", key, str(differs)))
            continue
        shadow = shadowed(vault, stored.blake3, version_id)
        if shadow is not None:
            problems.append(AnchorProblem("evicted-object-differs", key, shadow))
    return problems


def shadowed(vault: Vault, blake3: str, version_id: str | None) -> str | None:
    """What hides the confirmed version under its key (a newer version or a delete marker, which the
    station's credentials can add but not remove the locked version with), or None."""
    if not version_id:
        return None
    key = object_key(blake3)
    try:
        newest = vault.head(blake3)
    except VaultObjectMissingError:
        return f"a delete marker shadows the replicated version {version_id} of {key}"
    if newest.version_id != version_id:
        return f"a newer version {newest.version_id} shadows the replicated version {version_id} of {key}"
    return None
