"""`ingestd vault scrub`: read replicated objects back from the vault and check them.

Guarantees:
- Each object checked is the version the replicator confirmed (its recorded version id), read to the
  end and checked against size, BLAKE3 and SHA-256 from the catalog.
- A newer version under the same key (someone with write access to the bucket put other bytes
  there) is a failure too: a plain read of the key would return it.
- Every result is kept on the queue row (`scrubbed_at`, `scrub_error`), and the run is one audit event.
- Objects least recently scrubbed go first, so repeated `--sample N` runs cover the whole vault.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from ingestd.services import Services
from store.audit import Actor
from store.models import ReplicationItem, ReplicationKind, ReplicationState, StoredObject
from store.vault import Vault, VaultIntegrityError, object_key

ACTOR = Actor.system(source="vault-scrub")


@dataclass
class ScrubReport:
    checked: int = 0
    bytes_read: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # blake3 -> what failed

    @property
    def clean(self) -> bool:
        return not self.failures


def read_back(
    vault: Vault,
    blake3: str,
    *,
    version_id: str | None,
    sha256: str,
    size: int,
    on_chunk: Callable[[bytes], None] | None = None,
) -> str | None:
    """Read the confirmed version of one object to the end; None when size and both digests match and
    no newer version shadows it, else what failed. A vault that cannot be read raises `VaultError`."""
    try:
        for chunk in vault.stream(blake3, sha256_hex=sha256, size=size, version_id=version_id):
            if on_chunk is not None:
                on_chunk(chunk)
        newest = vault.head(blake3).version_id
    except VaultIntegrityError as failure:
        return str(failure)
    if version_id and newest != version_id:
        return f"a newer version {newest} shadows the replicated version {version_id} of {object_key(blake3)}"
    return None


def record(services: Services, item_id: int, *, now: datetime, error: str | None) -> None:
    """Keep one object's scrub result on its queue row (what eviction consults)."""
    with services.catalog.transaction() as db:
        row = db.get(ReplicationItem, item_id)
        if row is not None:
            row.scrubbed_at = now
            row.scrub_error = error


def scrub(
    services: Services,
    vault: Vault,
    *,
    now: datetime,
    sample: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ScrubReport:
    """Check `sample` replicated objects (all when None), least recently scrubbed first. A vault that
    cannot be read raises (`VaultError`); only integrity failures are recorded as results."""
    with services.catalog.transaction() as db:
        query = (
            select(ReplicationItem.id, ReplicationItem.subject, ReplicationItem.version_id, StoredObject)
            .join(StoredObject, StoredObject.blake3 == ReplicationItem.subject)
            .where(
                ReplicationItem.kind == ReplicationKind.OBJECT,
                ReplicationItem.state == ReplicationState.REPLICATED,
            )
            .order_by(
                ReplicationItem.scrubbed_at.is_not(None), ReplicationItem.scrubbed_at, ReplicationItem.id
            )
        )
        if sample is not None:
            query = query.limit(sample)
        chosen = [(row[0], row[1], row[2], row[3].sha256, row[3].size) for row in db.execute(query).all()]
    total = sum(size for *_, size in chosen)
    report = ScrubReport()

    def counted(chunk: bytes) -> None:
        report.bytes_read += len(chunk)
        if progress is not None:
            progress(report.bytes_read, total)

    for item_id, blake3, version_id, sha256, size in chosen:
        error = read_back(vault, blake3, version_id=version_id, sha256=sha256, size=size, on_chunk=counted)
        report.checked += 1
        if error is not None:
            report.failures[blake3] = error
        record(services, item_id, now=now, error=error)
    with services.catalog.transaction() as db:
        services.audit.append(
            db,
            actor=ACTOR,
            action="vault.scrub",
            subject=f"vault:{vault.settings.bucket}",
            outcome="ok" if report.clean else "failed",
            details={
                "checked": report.checked,
                "bytes": report.bytes_read,
                "failed": sorted(report.failures),
            },
            at=now,
        )
    return report
