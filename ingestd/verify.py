"""Whole-system verification: the audit chain from genesis, its signed checkpoints, and the objects.

Every problem is collected and named; nothing stops at the first one. An auditor reads the report, so
each line says what is wrong and where.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select

from ingestd.services import Services, checkpoint_path
from store.audit import verify_chain
from store.models import AuditEvent, StoredObject

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Problem:
    area: str  # "audit" or "object"
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

    @property
    def clean(self) -> bool:
        return not self.problems


def verify_audit(services: Services) -> tuple[int, list[Problem]]:
    with services.catalog.transaction() as session:
        count = session.scalar(select(func.count()).select_from(AuditEvent)) or 0
        found = verify_chain(
            session,
            checkpoint_path=checkpoint_path(services.config),
            public_key=services.audit.signer.public_key,
            checkpoint_every=services.config.audit.checkpoint_every,
        )
    problems = [
        Problem("audit", p.kind, f"seq {p.seq}" if p.seq is not None else "chain", p.detail) for p in found
    ]
    return count, problems


def verify_objects(services: Services, progress: ProgressCallback | None = None) -> tuple[int, list[Problem]]:
    with services.catalog.transaction() as session:
        # Objects the retention purge removed stay as tombstone rows; their absence is expected.
        rows = session.execute(
            select(StoredObject.blake3, StoredObject.sha256, StoredObject.size)
            .where(StoredObject.removed_at.is_(None))
            .order_by(StoredObject.blake3)
        ).all()
    total_bytes = sum(row.size for row in rows)
    done_bytes = 0
    problems: list[Problem] = []
    for row in rows:
        for found in services.store.verify_object(row.blake3, row.sha256, row.size):
            problems.append(Problem("object", found.kind, row.blake3, found.detail))
        done_bytes += row.size
        if progress is not None:
            progress(done_bytes, total_bytes)
    return len(rows), problems


def verify_all(
    services: Services, *, objects: bool, progress: ProgressCallback | None = None
) -> VerifyReport:
    events, problems = verify_audit(services)
    checked = 0
    if objects:
        checked, object_problems = verify_objects(services, progress)
        problems += object_problems
    return VerifyReport(events_checked=events, objects_checked=checked, problems=problems)
