"""The audit chain anchored in the vault, under `audit/<station-id>/`, as locked records.

Guarantees:
- Every signed checkpoint goes to `checkpoints/<seq>-<sha256 prefix>.json` as its exact signed line, and
  the events since the previous checkpoint go to `segments/<first>-<last>.jsonl`, one canonical JSON
  line per event (its fields, `prev_hash` and `hash`). Boundaries are the checkpoints' own, so a
  segment's content never changes once its checkpoint exists.
- Both are queued like objects and locked in compliance mode: root on the station can rewrite the
  catalog and the checkpoint file, but not these. A rewritten local chain then differs from the vault:
  `ingestctl verify --vault` compares every anchored event and checkpoint with the local chain, and
  re-sending a segment that differs is refused (`VaultIntegrityError`).
- The station id is the signing key's id, so two stations never share a prefix.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ingestd import replication
from store.audit import HASHED_FIELDS, AuditLog
from store.checkpoints import Checkpoint, CheckpointFile, format_utc
from store.errors import IntegrityError
from store.models import AuditEvent, ReplicationKind
from store.signing import canonical_json
from store.vault import Vault


class AnchorError(IntegrityError):
    """The local chain cannot produce a segment it checkpointed (events missing)."""

    template = "integrity: audit anchor {key}: {detail}"
    wire_code = "audit-anchor"


@dataclass(frozen=True)
class AnchoredChain:
    """What anchoring needs of a station's chain: the key id that names it in the vault and its checkpoint
    file. The daemon takes both from its audit log; `ingestctl verify --vault` from the published public
    key, so it needs no private key."""

    key_id: str
    checkpoints: CheckpointFile

    @classmethod
    def of(cls, audit: AuditLog) -> AnchoredChain:
        return cls(audit.signer.key_id, audit.checkpoints)


def station_id(chain: AnchoredChain) -> str:
    return chain.key_id.replace(":", "-")


def prefix(chain: AnchoredChain) -> str:
    return f"audit/{station_id(chain)}/"


def segment_key(chain: AnchoredChain, first: int, last: int) -> str:
    return f"{prefix(chain)}segments/{first:012d}-{last:012d}.jsonl"


def checkpoint_key(chain: AnchoredChain, checkpoint: Checkpoint) -> str:
    digest = hashlib.sha256(checkpoint.to_line()).hexdigest()[:16]
    return f"{prefix(chain)}checkpoints/{checkpoint.seq:012d}-{digest}.json"


def _own_checkpoints(chain: AnchoredChain) -> Iterator[Checkpoint]:
    for line in chain.checkpoints.lines():
        if line.checkpoint is not None and line.checkpoint.key_id == chain.key_id:
            yield line.checkpoint


def enqueue_audit(db: Session, chain: AnchoredChain, now: datetime) -> int:
    """Queue every checkpoint and every segment up to the latest checkpoint; returns how many were new."""
    added = 0
    last = 0
    for checkpoint in sorted(_own_checkpoints(chain), key=lambda c: c.seq):
        key = checkpoint_key(chain, checkpoint)
        added += replication.enqueue(
            db, kind=ReplicationKind.AUDIT, subject=key, size=len(checkpoint.to_line()), now=now
        )
        if checkpoint.seq > last:
            added += replication.enqueue(
                db,
                kind=ReplicationKind.AUDIT,
                subject=segment_key(chain, last + 1, checkpoint.seq),
                size=0,
                now=now,
            )
            last = checkpoint.seq
    return added


def event_record(event: AuditEvent) -> dict[str, Any]:
    """One event as a segment line holds it: the fields its hash covers, in their hashed form, and
    the hash."""
    record: dict[str, Any] = {name: getattr(event, name) for name in HASHED_FIELDS}
    record["at"] = format_utc(event.at)
    record["hash"] = event.hash
    return record


def render(db: Session, chain: AnchoredChain, key: str) -> bytes:
    """The bytes of the record under `key`, from the local chain and checkpoint file."""
    name = key.removeprefix(prefix(chain))
    if name.startswith("segments/"):
        first, last = (int(part) for part in name.removeprefix("segments/").removesuffix(".jsonl").split("-"))
        events = db.scalars(
            select(AuditEvent).where(AuditEvent.seq >= first, AuditEvent.seq <= last).order_by(AuditEvent.seq)
        ).all()
        if [event.seq for event in events] != list(range(first, last + 1)):
            raise AnchorError(key=key, detail=f"the local chain lacks events of {first}..{last}")
        return b"".join(canonical_json(event_record(event)) + b"\n" for event in events)
    for checkpoint in _own_checkpoints(chain):
        if checkpoint_key(chain, checkpoint) == key:
            return checkpoint.to_line()
    raise AnchorError(key=key, detail="no such checkpoint in the local checkpoint file")


@dataclass(frozen=True)
class AnchorProblem:
    kind: str  # event-differs, event-missing-locally, checkpoint-differs, checkpoint-missing-locally
    key: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "key": self.key, "detail": self.detail}


@dataclass(frozen=True)
class AnchorReport:
    bucket: str
    prefix: str
    segments: int
    checkpoints: int
    events_compared: int
    problems: tuple[AnchorProblem, ...]


def verify_against_vault(db: Session, chain: AnchoredChain, vault: Vault) -> AnchorReport:
    """Compare every anchored event and checkpoint with the local chain; every difference is a problem."""
    problems: list[AnchorProblem] = []
    keys = vault.list_keys(prefix(chain))
    segments = [key for key in keys if "/segments/" in key]
    checkpoints = [key for key in keys if "/checkpoints/" in key]
    compared = 0
    for key in segments:
        for raw in vault.get_record(key).splitlines():
            anchored = json.loads(raw)
            local = db.get(AuditEvent, anchored["seq"])
            compared += 1
            if local is None:
                problems.append(
                    AnchorProblem(
                        "event-missing-locally", key, f"event {anchored['seq']} is not in the local chain"
                    )
                )
            elif canonical_json(event_record(local)) != raw:
                problems.append(
                    AnchorProblem(
                        "event-differs",
                        key,
                        f"event {local.seq}: local hash {local.hash}, anchored {anchored['hash']}",
                    )
                )
    local_lines = {checkpoint_key(chain, checkpoint) for checkpoint in _own_checkpoints(chain)}
    if not keys and local_lines:  # a replaced station key names an empty prefix: that is no clean bill
        problems.append(
            AnchorProblem(
                "not-anchored", prefix(chain), "the vault holds nothing of this chain under its key"
            )
        )
    for key in checkpoints:
        checkpoint = Checkpoint.parse(vault.get_record(key).decode("utf-8"))
        local = db.get(AuditEvent, checkpoint.seq)
        if local is None or local.hash != checkpoint.hash:
            problems.append(
                AnchorProblem(
                    "checkpoint-differs",
                    key,
                    f"signed hash {checkpoint.hash} at event {checkpoint.seq}; local "
                    f"{local.hash if local is not None else 'has no such event'}",
                )
            )
        if key not in local_lines:
            problems.append(
                AnchorProblem("checkpoint-missing-locally", key, "the local checkpoint file lacks this line")
            )
    return AnchorReport(
        bucket=vault.settings.bucket,
        prefix=prefix(chain),
        segments=len(segments),
        checkpoints=len(checkpoints),
        events_compared=compared,
        problems=tuple(problems),
    )
