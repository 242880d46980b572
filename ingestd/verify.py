"""Whole-system verification: the audit chain from genesis, its signed checkpoints, the catalog rows
that carry custody meaning against their events, and the objects.

Every problem is collected and named; nothing stops at the first one. An auditor reads the report, so
each line says what is wrong and where. Verifying only reads; keeping its outcome (`record_outcome`) is
the daemon's write, which `ingestctl verify` asks for over the control socket.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ingestd.config import Config
from ingestd.control.queries import VERIFY_ACTION
from ingestd.services import checkpoint_path
from ingestd.verify_rows import verify_rows
from store.audit import Actor, AuditLog, verify_chain
from store.catalog import Catalog
from store.models import AuditEvent, StoredObject
from store.objects import ObjectStore
from store.signing import PUBLIC_KEY_NAME, key_id, load_public_key

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Problem:
    area: str  # "audit", "catalog" (a row against its events) or "object"
    kind: str
    subject: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"area": self.area, "kind": self.kind, "subject": self.subject, "detail": self.detail}


@dataclass(frozen=True)
class VerifyReport:
    events_checked: int
    objects_checked: int
    problems: list[Problem]
    key_ids: list[str]  # the keys checkpoints were checked against
    pinned: bool  # given by the verifier (--public-key), not read from the station
    # Objects evicted locally (held in the vault only): not re-hashed here, but each must be on record.
    objects_evicted: int = 0

    @property
    def clean(self) -> bool:
        return not self.problems

    def outcome(self, *, objects: bool) -> VerifyOutcome:
        return VerifyOutcome(
            clean=self.clean,
            events_checked=self.events_checked,
            objects_checked=self.objects_checked,
            problems=len(self.problems),
            objects=objects,
        )


@dataclass(frozen=True)
class VerifyOutcome:
    """What the audit chain keeps of a verify run, for `status` and the metrics."""

    clean: bool
    events_checked: int
    objects_checked: int
    problems: int
    objects: bool  # the objects were re-hashed too

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_outcome(db: Session, audit: AuditLog, actor: Actor, outcome: VerifyOutcome, at: datetime) -> None:
    """Keep a verify run's outcome in the audit chain (`verify.run`), where `status` and the metrics read
    it. The daemon's write: `actor` is who ran the verify and reported this outcome."""
    audit.append(
        db,
        actor=actor,
        action=VERIFY_ACTION,
        subject="objects" if outcome.objects else "audit-chain",
        outcome="ok" if outcome.clean else "problems",
        details={
            "events_checked": outcome.events_checked,
            "objects_checked": outcome.objects_checked,
            "problems": outcome.problems,
            "objects": outcome.objects,
        },
        at=at,
    )


class Station(Protocol):
    """What verifying reads: `Services` in the daemon's own tools, `StationReader` for `ingestctl`."""

    config: Config
    catalog: Catalog
    store: ObjectStore


def station_public_key(config: Config) -> Ed25519PublicKey:
    """The key the station publishes beside its private key (`Signer.load_or_create` keeps it in step):
    enough to verify, so verifying never needs the private key."""
    return load_public_key(config.daemon.state_dir / PUBLIC_KEY_NAME)


def verify_audit(
    services: Station, public_keys: list[Ed25519PublicKey], station_key: Ed25519PublicKey
) -> tuple[int, list[Problem]]:
    """The chain and its checkpoints, checked against `public_keys`; `station_key` is the key the station
    says it signs with."""
    with services.catalog.transaction() as db:
        count = db.scalar(select(func.count()).select_from(AuditEvent)) or 0
        found = verify_chain(
            db,
            checkpoint_path=checkpoint_path(services.config),
            public_key=public_keys,
            checkpoint_every=services.config.audit.checkpoint_every,
        )
    problems = [
        Problem("audit", p.kind, f"seq {p.seq}" if p.seq is not None else "chain", p.detail) for p in found
    ]
    station = key_id(station_key)
    trusted = [key_id(key) for key in public_keys]
    if station not in trusted:
        problems.append(
            Problem(
                "audit",
                "key-mismatch",
                "signing key",
                f"the station signs with {station}, which is not a trusted key ({', '.join(trusted)}): "
                "its key was replaced, or the trusted keys are another station's",
            )
        )
    return count, problems


def verify_catalog_rows(services: Station) -> list[Problem]:
    """Recordings, approvals and custody rows that disagree with their audit events."""
    with services.catalog.transaction() as db:
        found = verify_rows(db)
    return [Problem("catalog", p.kind, p.subject, p.detail) for p in found]


def verify_objects(
    services: Station, progress: ProgressCallback | None = None
) -> tuple[int, int, list[Problem]]:
    """Re-hash every object held locally; an evicted one is counted (`verify_catalog_rows` checks its
    `evicted_at` against its events: a catalog writer cannot hide a lost object by marking it evicted).
    Returns (checked, evicted, problems)."""
    with services.catalog.transaction() as db:
        # Objects the retention purge removed stay as tombstone rows; their absence is expected.
        rows = db.execute(
            select(
                StoredObject.blake3,
                StoredObject.sha256,
                StoredObject.size,
                StoredObject.seal,
                StoredObject.evicted_at,
            )
            .where(StoredObject.removed_at.is_(None))
            .order_by(StoredObject.blake3)
        ).all()
        evicted = [row.blake3 for row in rows if row.evicted_at is not None]
    problems: list[Problem] = []
    local = [row for row in rows if row.evicted_at is None]
    total_bytes = sum(row.size for row in local)
    done_bytes = 0
    for row in local:
        # The seal the catalog recorded: knowing what this store seals now would take writing a probe.
        for found in services.store.verify_object(row.blake3, row.sha256, row.size, seal=row.seal):
            problems.append(Problem("object", found.kind, row.blake3, found.detail))
        done_bytes += row.size
        if progress is not None:
            progress(done_bytes, total_bytes)
    return len(local), len(evicted), problems


def verify_all(
    services: Station,
    *,
    objects: bool,
    progress: ProgressCallback | None = None,
    trusted_keys: Collection[Ed25519PublicKey] = (),
) -> VerifyReport:
    """Everything; checkpoints are checked against `trusted_keys` when given (kept off the machine),
    else against the station's published public key."""
    station_key = station_public_key(services.config)
    public_keys = list(trusted_keys) or [station_key]
    events, problems = verify_audit(services, public_keys, station_key)
    problems += verify_catalog_rows(services)
    checked = evicted = 0
    if objects:
        checked, evicted, object_problems = verify_objects(services, progress)
        problems += object_problems
    return VerifyReport(
        events_checked=events,
        objects_checked=checked,
        problems=problems,
        key_ids=[key_id(key) for key in public_keys],
        pinned=bool(trusted_keys),
        objects_evicted=evicted,
    )
