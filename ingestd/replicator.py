"""The replicator: sends the queue in the catalog to the vault, in the background or once.

Guarantees:
- An item becomes `replicated` only after `Vault.put` confirmed size, both digests and the compliance
  lock from the server; that and its audit event commit together.
- Docking and ingest never wait for it: it runs in its own thread with its own stop event, starts no
  new transfer while a dock is ingesting, and a vault outage only fails (and later retries) its items.
- A multipart upload interrupted by an outage, a stop or a crash resumes from the parts the server
  holds (the upload id and acknowledged parts are in the queue row).
- Lock changes follow the catalog: a later retention date or a hold is pushed to every replicated
  object whose vault lock falls short; a downgrade changes nothing in the vault.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import select

from ingestd import audit_anchor, eviction, replication
from ingestd.config import VaultConfig
from ingestd.policies.retention import add_months
from ingestd.services import Services
from store.audit import Actor
from store.crashpoints import Step, crash_point
from store.errors import StoreError
from store.models import ReplicationItem, ReplicationKind, ReplicationState, StoredObject
from store.types import utcnow
from store.vault import PartialUpload, Vault, VaultError, VaultIntegrityError, VaultObject, object_key

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
POLL_S = 2.0
MIN_RETENTION = timedelta(days=1)
LOCK_SYNC_INTERVAL_S = 60.0
ACTOR = Actor.system(source="replicator")


class Stopping(Exception):  # noqa: N818 - a signal to unwind, not an error
    """Raised inside a transfer when the replicator is asked to stop: the upload stays resumable."""


class Pacer:
    """Bandwidth cap (a token bucket shared by all transfers) and ingest priority, before each send."""

    def __init__(
        self, rate_bytes_s: float, stop: threading.Event, ingest_busy: Callable[[], bool] = lambda: False
    ) -> None:
        self.rate = rate_bytes_s
        self.stop = stop
        self.ingest_busy = ingest_busy
        self._lock = threading.Lock()
        self._tokens = rate_bytes_s
        self._last = time.monotonic()

    def __call__(self, size: int) -> None:
        while self.ingest_busy():
            if self.stop.wait(POLL_S / 4):
                raise Stopping
        if self.stop.is_set():
            raise Stopping
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate) - size
            self._last = now
            owed = -self._tokens / self.rate
        if owed > 0 and self.stop.wait(owed):
            raise Stopping


@dataclass(frozen=True)
class PassResult:
    replicated: int
    failed: int
    locks_changed: int


class Replicator:
    """The queue's consumer. `drain` is one pass (what `ingestd replicate --once` runs); `start` runs
    passes in a thread until `stop`."""

    def __init__(
        self,
        services: Services,
        vault: Vault,
        *,
        clock: Clock = utcnow,
        ingest_busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self.services = services
        self.vault = vault
        self.settings: VaultConfig = services.config.vault
        self.rules = services.config.retention.rules()
        self.clock = clock
        self.stop_event = threading.Event()
        self.pacer = Pacer(self.settings.bandwidth_limit_mib_s * 1024 * 1024, self.stop_event, ingest_busy)
        self._thread: threading.Thread | None = None
        self._last_lock_sync = float("-inf")
        self._evicted_once = False  # evictions a crash cut are finished on the first eviction pass

    # -- the thread ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="replicator", daemon=True)
        self._thread.start()
        log.info(
            "replicator_started", bucket=self.vault.settings.bucket, endpoint=self.vault.settings.endpoint
        )

    def stop(self, timeout: float | None = None) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        first = True
        while not self.stop_event.is_set():
            try:
                if first:
                    self.backfill()
                    first = False
                result = self.drain()
                if self.settings.evicts and not self.stop_event.is_set():
                    self.evict_past_high_water()
            except Exception as error:  # noqa: BLE001 - a failed pass is logged; the next one retries
                log.error("replication_pass_failed", error=f"{type(error).__name__}: {error}")  # noqa: TRY400 - the message is the story
                result = PassResult(0, 0, 0)
            if result.replicated == 0 and result.failed == 0:
                self.stop_event.wait(POLL_S)

    # -- one pass -----------------------------------------------------------------------------------

    def backfill(self) -> int:
        with self.services.catalog.transaction() as db:
            added = replication.backfill(db, self.clock())
        if added:
            log.info("replication_backfilled", objects=added)
        return added

    def drain(self, *, ignore_backoff: bool = False) -> PassResult:
        """Send every item due now (each not-replicated item once, with `ignore_backoff`), then push
        lock changes. Returns what happened; failures are recorded in the queue, not raised."""
        replicated = failed = 0
        seen: set[int] = set()
        self.enqueue_audit()
        with ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="replicate") as pool:
            while not self.stop_event.is_set():
                with self.services.catalog.transaction() as db:
                    batch = [
                        item.id
                        for item in replication.due(
                            db,
                            self.clock(),
                            limit=self.settings.concurrency + len(seen),
                            ignore_backoff=ignore_backoff,
                        )
                        if item.id not in seen
                    ]
                if not batch:
                    break
                seen.update(batch)
                for ok in pool.map(self.replicate, batch):
                    replicated += ok is True
                    failed += ok is False
        locks = 0
        # Lock sync reads every replicated object's recordings: once a minute in the daemon, not per pass.
        due_sync = ignore_backoff or time.monotonic() - self._last_lock_sync >= LOCK_SYNC_INTERVAL_S
        if due_sync and not self.stop_event.is_set():
            self._last_lock_sync = time.monotonic()
            locks = self.sync_locks()
        return PassResult(replicated, failed, locks)

    def evict_past_high_water(self) -> eviction.EvictionReport:
        """Evict local copies the vault holds while the store is past its high-water mark. Here, after
        each pass, because it needs what the pass just confirmed and the same vault client; it is cheap
        below the mark (one statfs)."""
        report = eviction.evict(
            self.services, self.vault, now=self.clock(), dry_run=False, finish_cut=not self._evicted_once
        )
        self._evicted_once = True
        if report.evicted or report.failed:
            log.info(
                "eviction_pass",
                evicted=len(report.evicted),
                freed_bytes=report.freed_bytes,
                kept=len(report.kept),
                failed=len(report.failed),
                store_percent=round((report.after or report.before).percent, 2),
            )
        return report

    def replicate(self, item_id: int) -> bool | None:
        """Send one item and confirm it; True when replicated, False when it failed (recorded), None
        when stopped (left resumable, no attempt counted)."""
        with self.services.catalog.transaction() as db:
            kind = db.scalar(select(ReplicationItem.kind).where(ReplicationItem.id == item_id))
        if kind is ReplicationKind.AUDIT:
            return self._replicate_audit(item_id)
        return self._replicate_object(item_id)

    def _replicate_audit(self, item_id: int) -> bool | None:
        problem = None
        with self.services.catalog.transaction() as db:
            item = db.get(ReplicationItem, item_id)
            if item is None or item.state is ReplicationState.REPLICATED:
                return None
            item.state = ReplicationState.UPLOADING
            item.attempts += 1
            key, attempts = item.subject, item.attempts
            try:
                record = audit_anchor.render(db, audit_anchor.AnchoredChain.of(self.services.audit), key)
            except audit_anchor.AnchorError as error:
                problem = str(error)
        if problem is not None:
            log.error("audit_anchor_failed", key=key, error=problem)
            return self._failed(item_id, attempts, problem)
        return self._replicate_record(item_id, key, record, attempts)

    def _replicate_object(self, item_id: int) -> bool | None:
        with self.services.catalog.transaction() as db:
            item = db.get(ReplicationItem, item_id)
            if item is None or item.state is ReplicationState.REPLICATED:
                return None
            stored = db.get(StoredObject, item.subject)
            if stored is None or stored.removed_at is not None:
                # The retention purge removed it (audited there) before it replicated: nothing to send.
                log.warning(
                    "replication_dropped", digest=item.subject, reason="removed by the retention purge"
                )
                db.delete(item)
                return None
            blake3, resume = item.subject, _resume(item)
            item.state = ReplicationState.UPLOADING
            item.attempts += 1
            attempts = item.attempts
            sha256, size = stored.sha256, stored.size
            wanted = replication.wanted_lock_for(db, blake3, self.rules)
        # S3 refuses a retention date in the past: an old object is locked for at least a day.
        until = max(wanted.retain_until, self.clock() + MIN_RETENTION)
        bound = log.bind(digest=blake3, key=object_key(blake3))
        try:
            found = self.vault.put(
                self.services.store.path_for(blake3),
                blake3_hex=blake3,
                sha256_hex=sha256,
                size=size,
                retain_until=until,
                legal_hold=wanted.legal_hold,
                resume=resume,
                on_part=lambda partial: self._save_parts(item_id, partial),
                pace=self.pacer,
            )
        except Stopping:
            with self.services.catalog.transaction() as db:
                item = db.get(ReplicationItem, item_id)
                if item is not None:
                    item.state = ReplicationState.PENDING
                    item.attempts -= 1
            return None
        except (VaultError, StoreError, OSError) as error:
            bound.warning("replication_failed", error=str(error), attempt=attempts)
            return self._failed(item_id, attempts, str(error))
        self._replicated(item_id, found)
        bound.info("replicated", size=size, version_id=found.version_id, retain_until=found.retain_until)
        return True

    def _replicate_record(self, item_id: int, key: str, record: bytes, attempts: int) -> bool:
        """Send one audit record, locked for the standard retention period from now."""
        until = add_months(self.clock(), 12 * self.rules.standard_years)
        try:
            found = self.vault.put_record(key, record, retain_until=until)
        except VaultIntegrityError as error:
            # A record that differs from the vault's is a rewritten chain (or vault): loud, and kept failed.
            log.error("audit_anchor_failed", key=key, error=str(error))  # noqa: TRY400 - the message is the story
            return self._failed(item_id, attempts, str(error))
        except VaultError as error:
            log.warning("replication_failed", key=key, error=str(error), attempt=attempts)
            return self._failed(item_id, attempts, str(error))
        now = self.clock()
        with self.services.catalog.transaction() as db:
            item = db.get(ReplicationItem, item_id)
            if item is not None:
                item.state = ReplicationState.REPLICATED
                item.size = len(record)
                item.replicated_at = now
                item.version_id = found.version_id
                item.retain_until = found.retain_until
                item.last_error = None
        return True

    def enqueue_audit(self) -> int:
        with self.services.catalog.transaction() as db:
            return audit_anchor.enqueue_audit(
                db, audit_anchor.AnchoredChain.of(self.services.audit), self.clock()
            )

    def _save_parts(self, item_id: int, partial: PartialUpload) -> None:
        with self.services.catalog.transaction() as db:
            item = db.get(ReplicationItem, item_id)
            if item is not None:
                item.upload_id = partial.upload_id
                item.parts = [{"n": number, "etag": etag} for number, etag in partial.parts]
        if partial.parts:
            crash_point(Step.VAULT_PART)

    def _failed(self, item_id: int, attempts: int, error: str) -> bool:
        now = self.clock()
        with self.services.catalog.transaction() as db:
            item = db.get(ReplicationItem, item_id)
            if item is not None:
                item.state = ReplicationState.FAILED
                item.last_error = error[:2000]
                item.next_attempt_at = now + replication.backoff(
                    attempts, timedelta(seconds=self.settings.retry_initial_seconds)
                )
        return False

    def _replicated(self, item_id: int, found: VaultObject) -> None:
        now = self.clock()
        with self.services.catalog.transaction() as db:
            item = db.get(ReplicationItem, item_id)
            if item is None:
                return
            item.state = ReplicationState.REPLICATED
            item.replicated_at = now
            item.version_id = found.version_id
            item.retain_until = found.retain_until
            item.legal_hold = found.legal_hold
            item.upload_id = None
            item.parts = []
            item.last_error = None
            self.services.audit.append(
                db,
                actor=ACTOR,
                action="vault.replicate",
                subject=f"object:{item.subject}",
                details={
                    "bucket": self.vault.settings.bucket,
                    "key": found.key,
                    "version_id": found.version_id,
                    "size": found.size,
                    "retain_until": found.retain_until.isoformat() if found.retain_until else None,
                    "legal_hold": found.legal_hold,
                },
                at=now,
            )

    # -- lock changes -------------------------------------------------------------------------------

    def sync_locks(self) -> int:
        """Extend retention and set legal holds where the catalog now asks for more than the vault
        has; release a hold the catalog no longer asks for. Never shortens (compliance mode)."""
        changed = 0
        with self.services.catalog.transaction() as db:
            rows = db.execute(
                select(
                    ReplicationItem.id,
                    ReplicationItem.subject,
                    ReplicationItem.retain_until,
                    ReplicationItem.legal_hold,
                ).where(
                    ReplicationItem.kind == ReplicationKind.OBJECT,
                    ReplicationItem.state == ReplicationState.REPLICATED,
                )
            ).all()
            wanted = {
                subject: replication.wanted_lock_for(db, subject, self.rules) for _, subject, _, _ in rows
            }
        for item_id, subject, until, hold in rows:
            want = wanted[subject]
            details: dict[str, object] = {}
            try:
                if until is None or want.retain_until.replace(microsecond=0) > until:
                    details["retain_until"] = self.vault.extend_retention(
                        subject, want.retain_until
                    ).isoformat()
                if want.legal_hold != hold:
                    self.vault.set_legal_hold(subject, on=want.legal_hold)
                    details["legal_hold"] = want.legal_hold
            except VaultError as error:
                log.warning("vault_lock_sync_failed", digest=subject, error=str(error))
                continue
            if details:
                changed += 1
                self._lock_changed(item_id, want, details)
        return changed

    def _lock_changed(self, item_id: int, want: replication.WantedLock, details: dict[str, object]) -> None:
        now = self.clock()
        with self.services.catalog.transaction() as db:
            item = db.get(ReplicationItem, item_id)
            if item is None:
                return
            if "retain_until" in details:
                item.retain_until = want.retain_until
            item.legal_hold = want.legal_hold
            self.services.audit.append(
                db,
                actor=ACTOR,
                action="vault.lock",
                subject=f"object:{item.subject}",
                details={"bucket": self.vault.settings.bucket, **details},
                at=now,
            )


def _resume(item: ReplicationItem) -> PartialUpload | None:
    if not item.upload_id:
        return None
    return PartialUpload(item.upload_id, tuple((int(part["n"]), str(part["etag"])) for part in item.parts))
