"""Catalog rows as a dock would have left them, for tests of the operator actions, jobs and purge."""

from __future__ import annotations

import hashlib
import io
import itertools
from datetime import datetime, timedelta
from pathlib import Path

from alembic import command
from sqlalchemy import select
from sqlalchemy.orm import Session

from ingestd import schema
from store.audit import Actor, AuditLog, Role
from store.catalog import Catalog
from store.models import (
    AuditEvent,
    Base,
    Camera,
    Confidentiality,
    Officer,
    Recording,
    RetentionClass,
    StoredObject,
    Unit,
)
from store.objects import ObjectStore, Seal
from store.signing import Signer

CLERK = Actor(user="li.clerk", uid=1001, role=Role.CLERK, source="ctl:uid=1001")
_keys = itertools.count(1)


def current_schema(url: str) -> None:
    """A catalog at the models' schema, stamped as migrated, so `Services.open(migrate=False)` accepts it.
    Built from the models rather than the migrations: these tests are about what runs on the schema."""
    catalog = Catalog.open(url)
    try:
        Base.metadata.create_all(catalog.engine)
        config = schema.alembic_config()
        with catalog.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.stamp(config, "head")
    finally:
        catalog.close()


def audit_log(tmp_path: Path) -> AuditLog:
    state = tmp_path / "state"
    checkpoints = state / "audit-checkpoints.jsonl"
    return AuditLog(Signer.load_or_create(state), checkpoints, 1000, set_append_only=False)


def officer(db: Session, officer_no: str, name: str) -> Officer:
    row = db.scalar(select(Officer).where(Officer.officer_no == officer_no))
    if row is None:
        unit = db.scalar(select(Unit).where(Unit.unit_no == "110105000000"))
        if unit is None:
            unit = Unit(unit_no="110105000000", name="朝阳分局")
        row = Officer(officer_no=officer_no, name=name, unit=unit)
        db.add(row)
        db.flush()
    return row


def camera(db: Session, serial: str, *, assigned: Officer | None, first_seen_at: datetime) -> Camera:
    row = Camera(
        device_serial=serial, driver="serial", assigned_officer=assigned, first_seen_at=first_seen_at
    )
    db.add(row)
    db.flush()
    return row


def payload(seed: str, size: int = 4096) -> bytes:
    return hashlib.shake_256(f"footage-{seed}".encode()).digest(size)


def stored_object(
    db: Session, data: bytes, *, stored_at: datetime, store: ObjectStore | None = None
) -> StoredObject:
    """The catalog row for `data`, and (with `store`) its bytes really put in the store."""
    if store is not None:
        result = store.put(io.BytesIO(data), expected_size=len(data))
        digest, sha256, seal = result.blake3, result.sha256, result.seal
    else:
        import blake3  # noqa: PLC0415 - only the catalog-only path needs the digest computed here

        digest, sha256 = blake3.blake3(data).hexdigest(), hashlib.sha256(data).hexdigest()
        seal = Seal.READ_ONLY
    row = db.get(StoredObject, digest)
    if row is None:
        row = StoredObject(blake3=digest, sha256=sha256, size=len(data), seal=seal, stored_at=stored_at)
        db.add(row)
        db.flush()
    return row


def recording(
    db: Session,
    cam: Camera,
    obj: StoredObject,
    *,
    recorded_at: datetime,
    ingested_at: datetime,
    duration_s: float | None = 60.0,
    dock_session_id: int | None = None,
    retention_class: RetentionClass = RetentionClass.ROUTINE,
    tags: list[str] | None = None,
    case_id: str | None = None,
    audit: AuditLog | None = None,
) -> Recording:
    """A recording row; with `audit`, also its recording.ingest event, as a dock session writes it (what
    `ingestctl verify` needs to find the row accounted for)."""
    key = f"DCIM/{next(_keys):05d}.MP4"
    row = Recording(
        camera_id=cam.id,
        officer_id=cam.assigned_officer_id,
        dock_session_id=dock_session_id,
        original_path=key,
        source_key=key,
        size=obj.size,
        recorded_at_raw=recorded_at,
        recorded_at=recorded_at,
        recorded_at_source="mvhd",
        duration_s=duration_s,
        ingested_at=ingested_at,
        deadline_at=recorded_at + timedelta(seconds=duration_s or 0) + timedelta(hours=24),
        blake3=obj.blake3,
        sha256=obj.sha256,
        retention_class=retention_class,
        retention_tags=tags or [],
        confidentiality=Confidentiality.NORMAL,
        case_id=case_id,
    )
    db.add(row)
    db.flush()
    if audit is not None:
        audit.append(
            db,
            actor=Actor.system("dock:seed"),
            action="recording.ingest",
            subject=f"recording:{row.id}",
            details={
                "camera": cam.device_serial,
                "path": key,
                "blake3": obj.blake3,
                "sha256": obj.sha256,
                "size": obj.size,
                "seal": obj.seal.value,
            },
            at=ingested_at,
        )
    return row


def audit_events(db: Session, action: str | None = None) -> list[AuditEvent]:
    query = select(AuditEvent).order_by(AuditEvent.seq)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    return list(db.scalars(query).all())
