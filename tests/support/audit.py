"""Forging an audit chain the way an attacker with database access would, for verification tests."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import blake3
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from store.audit import GENESIS_HASH
from store.models import AuditEvent, AuditHead


def spec_hash(prev_hash: str, event: AuditEvent) -> str:
    """The documented rule, written out independently of store.audit."""
    body = {
        "seq": event.seq,
        "at": event.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor_user": event.actor_user,
        "actor_uid": event.actor_uid,
        "actor_role": event.actor_role,
        "action": event.action,
        "subject": event.subject,
        "outcome": event.outcome,
        "source": event.source,
        "details": event.details,
        "prev_hash": prev_hash,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return blake3.blake3(bytes.fromhex(prev_hash) + canonical.encode("utf-8")).hexdigest()


def rewrite_chain(engine: Engine, new_details: dict[str, Any], *, start: int = 1) -> int:
    """Replace the details of every event from seq `start` on and recompute every hash from there and
    the head: a self-consistent forgery. Returns the head seq."""
    with Session(engine) as db:
        events = db.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        db.expunge_all()
    previous = GENESIS_HASH
    with engine.begin() as connection:
        for event in events:
            if event.seq >= start:
                event.details = {**new_details, "n": event.seq}
                event.prev_hash = previous
                event.hash = spec_hash(previous, event)
                connection.execute(
                    update(AuditEvent)
                    .where(AuditEvent.seq == event.seq)
                    .values(details=event.details, prev_hash=event.prev_hash, hash=event.hash)
                )
            previous = event.hash
        connection.execute(update(AuditHead).values(seq=len(events), hash=previous))
    return len(events)
