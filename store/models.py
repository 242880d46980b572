"""The catalog schema: who, which camera, which recording, where it is stored, and what happened.

Identity fields follow GA/T 947.4 (device serial 7, officer number 6, unit number 12). Every datetime
column is `UTCDateTime`, so a naive time can never be written. Recordings point at stored objects by
BLAKE3 digest; the object store holds the bytes, the catalog holds the facts.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# The enums live in a module with no dependencies, for the pure policies; re-exported for the catalog's users.
from store.kinds import CustodyKind as CustodyKind  # noqa: PLC0414 - an explicit re-export (mypy strict)
from store.kinds import FlagKind as FlagKind  # noqa: PLC0414 - an explicit re-export (mypy strict)
from store.kinds import RetentionClass as RetentionClass  # noqa: PLC0414 - an explicit re-export (mypy strict)
from store.objects import Seal
from store.types import UTCDateTime

# Stable constraint names, so Alembic batch migrations on SQLite can find them again.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

DIGEST_HEX = 64  # BLAKE3-256 and SHA-256, hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as the value string with a CHECK, portable across SQLite and PostgreSQL.
    return Enum(
        cls,
        name=cls.__name__.lower(),
        native_enum=False,
        create_constraint=True,
        values_callable=lambda members: [m.value for m in members],
        length=24,
    )


class Confidentiality(enum.StrEnum):
    NORMAL = "normal"
    PRIVACY = "privacy"  # personal privacy of a party or bystander
    TRADE_SECRET = "trade-secret"  # noqa: S105 - a secrecy level, not a secret
    STATE_SECRET = "state-secret"  # noqa: S105 - a secrecy level, not a secret


class SessionState(enum.StrEnum):
    IDENTIFYING = "identifying"
    SYNCING = "syncing"
    INGESTING = "ingesting"
    DONE = "done"
    FAILED = "failed"
    UNPLUGGED = "unplugged"
    INTERRUPTED = "interrupted"  # the daemon stopped or crashed; set by reconciliation


class FlagStatus(enum.StrEnum):
    OPEN = "open"
    EXPLAINED = "explained"
    RESOLVED = "resolved"


class Unit(Base):
    __tablename__ = "units"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    unit_no: Mapped[str] = mapped_column(String(12), unique=True)
    name: Mapped[str] = mapped_column(String(64))


class Officer(Base):
    __tablename__ = "officers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    officer_no: Mapped[str] = mapped_column(String(6), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    unit_id: Mapped[int | None] = mapped_column(ForeignKey("units.id"))

    unit: Mapped[Unit | None] = relationship()


class Camera(Base):
    __tablename__ = "cameras"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_serial: Mapped[str] = mapped_column(String(7), unique=True)
    usb_serial: Mapped[str | None] = mapped_column(String(64))
    driver: Mapped[str] = mapped_column(String(32))
    unit_id: Mapped[int | None] = mapped_column(ForeignKey("units.id"))
    assigned_officer_id: Mapped[int | None] = mapped_column(ForeignKey("officers.id"))
    # Who has it now: set on check-out, cleared on check-in.
    holder_officer_id: Mapped[int | None] = mapped_column(ForeignKey("officers.id"))
    checked_out_at: Mapped[datetime | None]
    last_docked_at: Mapped[datetime | None]
    battery_percent: Mapped[int | None] = mapped_column(Integer)
    storage_free_bytes: Mapped[int | None] = mapped_column(BigInteger)
    storage_total_bytes: Mapped[int | None] = mapped_column(BigInteger)
    last_clock_offset_s: Mapped[float | None] = mapped_column(Float)
    clock_state: Mapped[str | None] = mapped_column(String(24))
    first_seen_at: Mapped[datetime]

    unit: Mapped[Unit | None] = relationship()
    assigned_officer: Mapped[Officer | None] = relationship(foreign_keys=[assigned_officer_id])
    holder: Mapped[Officer | None] = relationship(foreign_keys=[holder_officer_id])


class Dock(Base):
    """One physical dock slot, keyed by its USB port path. Progress is persisted here about 1 Hz."""

    __tablename__ = "docks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    port: Mapped[str] = mapped_column(String(255), unique=True)
    state: Mapped[str] = mapped_column(String(24), default="empty")
    camera_id: Mapped[int | None] = mapped_column(ForeignKey("cameras.id"))
    current_file: Mapped[str | None] = mapped_column(Text)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    rate_bps: Mapped[float | None] = mapped_column(Float)
    eta_s: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime]


class DockVisit(Base):
    """One dock of one camera, from uevent to unplug: the unit of work and of the summary log line."""

    __tablename__ = "dock_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dock_id: Mapped[int] = mapped_column(ForeignKey("docks.id"))
    camera_id: Mapped[int | None] = mapped_column(ForeignKey("cameras.id"))
    state: Mapped[SessionState] = mapped_column(_enum(SessionState))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    battery_percent: Mapped[int | None] = mapped_column(Integer)
    storage_free_bytes: Mapped[int | None] = mapped_column(BigInteger)
    clock_offset_s: Mapped[float | None] = mapped_column(Float)
    clock_round_trip_s: Mapped[float | None] = mapped_column(Float)
    clock_state: Mapped[str | None] = mapped_column(String(24))
    files_total: Mapped[int] = mapped_column(Integer, default=0)
    files_done: Mapped[int] = mapped_column(Integer, default=0)
    files_failed: Mapped[int] = mapped_column(Integer, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)

    camera: Mapped[Camera | None] = relationship()

    # The latest session of each dock (status) is one index seek per dock, not a scan of the history.
    __table_args__ = (Index("ix_dock_sessions_dock", "dock_id", "id"),)


class ClockReading(Base):
    """Drift history: the offset measured before each correction."""

    __tablename__ = "clock_readings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    camera_id: Mapped[int] = mapped_column(ForeignKey("cameras.id"))
    dock_session_id: Mapped[int | None] = mapped_column(ForeignKey("dock_sessions.id"))
    measured_at: Mapped[datetime]
    offset_s: Mapped[float | None] = mapped_column(Float)
    round_trip_s: Mapped[float | None] = mapped_column(Float)
    residual_s: Mapped[float | None] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(24))

    __table_args__ = (
        Index("ix_clock_readings_camera_time", "camera_id", "measured_at"),
        # The report's drift over a period, covered: no scan of the station's whole drift history.
        Index("ix_clock_readings_time", "measured_at", "camera_id", "offset_s"),
    )


class CustodyEvent(Base):
    __tablename__ = "custody_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    camera_id: Mapped[int] = mapped_column(ForeignKey("cameras.id"))
    officer_id: Mapped[int | None] = mapped_column(ForeignKey("officers.id"))
    kind: Mapped[CustodyKind] = mapped_column(_enum(CustodyKind))
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(64))  # OS user, or "ingestd" for dock events
    actor_role: Mapped[str] = mapped_column(String(24))
    dock_session_id: Mapped[int | None] = mapped_column(ForeignKey("dock_sessions.id"))
    note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_custody_camera_time", "camera_id", "at"),
        Index("ix_custody_officer_time", "officer_id", "at"),
        Index("ix_custody_session", "dock_session_id"),  # who checked in the camera on a dock (status)
    )


class StoredObject(Base):
    """Bytes in the object store, content-addressed by BLAKE3; shared by deduplicated recordings."""

    __tablename__ = "stored_objects"
    __table_args__ = (Index("ix_stored_objects_evicted", "evicted_at"),)  # counted by status and metrics

    blake3: Mapped[str] = mapped_column(String(DIGEST_HEX), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(DIGEST_HEX))
    size: Mapped[int] = mapped_column(BigInteger)
    seal: Mapped[Seal] = mapped_column(_enum(Seal))
    stored_at: Mapped[datetime]
    last_verified_at: Mapped[datetime | None]
    # Set by the retention purge once the bytes are gone; the row stays as a tombstone because purged
    # recordings still reference it and an auditor must be able to see what was stored and when it went.
    removed_at: Mapped[datetime | None]
    # Set when the local bytes were evicted because the vault holds a confirmed, locked copy: the object
    # is live, and its recordings are streamed back from the vault (the version the replicator confirmed).
    evicted_at: Mapped[datetime | None]


class Recording(Base):
    """One recording pulled from a camera (footage). Never edited: only classification and hold change."""

    __tablename__ = "recordings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    camera_id: Mapped[int] = mapped_column(ForeignKey("cameras.id"))
    officer_id: Mapped[int | None] = mapped_column(ForeignKey("officers.id"))
    unit_id: Mapped[int | None] = mapped_column(ForeignKey("units.id"))
    dock_session_id: Mapped[int | None] = mapped_column(ForeignKey("dock_sessions.id"))
    # What the camera holds: its path (display form) and a key that says "already ingested".
    original_path: Mapped[str] = mapped_column(Text)
    source_key: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(BigInteger)
    # recorded_at as the camera reported it, and corrected by the clock offset measured at the dock.
    recorded_at_raw: Mapped[datetime]
    recorded_at: Mapped[datetime]
    recorded_at_source: Mapped[str] = mapped_column(String(16))
    clock_offset_s: Mapped[float | None] = mapped_column(Float)
    duration_s: Mapped[float | None] = mapped_column(Float)
    # Why the recording was cut short, when the file shows it (e.g. "unfinalized container").
    interruption: Mapped[str | None] = mapped_column(String(64))
    ingested_at: Mapped[datetime]
    deadline_at: Mapped[datetime]
    # Why deadline_at was extended (003 art. 11: only for cause); who and when are in the audit chain.
    deadline_extension_reason: Mapped[str | None] = mapped_column(Text)
    blake3: Mapped[str] = mapped_column(String(DIGEST_HEX), ForeignKey("stored_objects.blake3"))
    sha256: Mapped[str] = mapped_column(String(DIGEST_HEX))
    retention_class: Mapped[RetentionClass] = mapped_column(_enum(RetentionClass))
    retention_tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    hold_reason: Mapped[str | None] = mapped_column(Text)
    case_id: Mapped[str | None] = mapped_column(String(64))
    case_party: Mapped[str | None] = mapped_column(String(128))
    case_name: Mapped[str | None] = mapped_column(String(255))
    event: Mapped[str | None] = mapped_column(Text)
    place: Mapped[str | None] = mapped_column(Text)
    confidentiality: Mapped[Confidentiality] = mapped_column(_enum(Confidentiality))
    # Retention: when the deletion notice was given (cleared by a legal hold, so a notice given before
    # a hold never counts after its release), and when the purge made this row a tombstone.
    purge_notice_at: Mapped[datetime | None]
    purged_at: Mapped[datetime | None]

    camera: Mapped[Camera] = relationship()
    officer: Mapped[Officer | None] = relationship()
    stored_object: Mapped[StoredObject] = relationship()

    __table_args__ = (
        UniqueConstraint("camera_id", "source_key", name="uq_recordings_camera_source"),
        Index("ix_recordings_recorded_at", "recorded_at"),
        Index("ix_recordings_officer_time", "officer_id", "recorded_at"),
        Index("ix_recordings_unit_time", "unit_id", "recorded_at"),
        Index("ix_recordings_camera_time", "camera_id", "recorded_at"),
        Index("ix_recordings_case", "case_id"),
        Index("ix_recordings_blake3", "blake3"),
        CheckConstraint("size >= 0", name="size_non_negative"),
    )


class Flag(Base):
    """Something a person must look at. `dedup_key` makes raising a flag idempotent."""

    __tablename__ = "flags"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[FlagKind] = mapped_column(_enum(FlagKind))
    status: Mapped[FlagStatus] = mapped_column(_enum(FlagStatus), default=FlagStatus.OPEN)
    dedup_key: Mapped[str] = mapped_column(String(255), unique=True)
    raised_at: Mapped[datetime]
    camera_id: Mapped[int | None] = mapped_column(ForeignKey("cameras.id"))
    recording_id: Mapped[int | None] = mapped_column(ForeignKey("recordings.id"))
    dock_session_id: Mapped[int | None] = mapped_column(ForeignKey("dock_sessions.id"))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    explanation: Mapped[str | None] = mapped_column(Text)
    explained_by: Mapped[str | None] = mapped_column(String(64))
    explained_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_flags_status_kind", "status", "kind"),
        Index("ix_flags_kind_time", "kind", "raised_at"),  # the report's flags of a kind in a period
        # The report's gaps and interruptions of a period's recordings: read without the flag rows.
        Index("ix_flags_kind_recording", "kind", "recording_id"),
    )


class ReplicationState(enum.StrEnum):
    PENDING = "pending"
    UPLOADING = "uploading"
    REPLICATED = "replicated"  # size, digests and lock confirmed from the server
    FAILED = "failed"  # the last attempt failed; retried at next_attempt_at


class ReplicationKind(enum.StrEnum):
    OBJECT = "object"  # a stored object, `subject` is its BLAKE3
    AUDIT = "audit"  # an audit segment or checkpoint, `subject` is its vault key


class ReplicationItem(Base):
    """One thing to send to the vault, persisted so replication survives restarts and outages.

    The vault's lock state as last confirmed (`retain_until`, `legal_hold`) is kept beside it, so a
    later rise of the recording's class or a hold is seen as a difference to push."""

    __tablename__ = "replication_queue"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[ReplicationKind] = mapped_column(_enum(ReplicationKind))
    subject: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[ReplicationState] = mapped_column(_enum(ReplicationState))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(Text)
    # A multipart upload in progress: its id and the parts the server acknowledged ({"n", "etag"}).
    upload_id: Mapped[str | None] = mapped_column(String(255))
    parts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    replicated_at: Mapped[datetime | None]
    version_id: Mapped[str | None] = mapped_column(String(255))
    retain_until: Mapped[datetime | None]
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    # The last `ingestd vault scrub` of this version: when, and what failed (None: it verified).
    scrubbed_at: Mapped[datetime | None]
    scrub_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("kind", "subject", name="uq_replication_queue_kind_subject"),
        Index("ix_replication_queue_state_next", "state", "next_attempt_at"),
    )


class Approval(Base):
    """Permission to view, copy or export footage (000 art. 16; 002 art. 16; 004 art. 20)."""

    __tablename__ = "approvals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    approver: Mapped[str] = mapped_column(String(64))
    # The one OS user who may use it (never the approver); None only on rows from before grantees.
    grantee: Mapped[str | None] = mapped_column(String(64))
    requested_by: Mapped[str | None] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(Text)
    scope_case_id: Mapped[str | None] = mapped_column(String(64))
    scope_recording_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    allows_confidential: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class Export(Base):
    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    approval_id: Mapped[int] = mapped_column(ForeignKey("approvals.id"))
    destination: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(64))
    recording_count: Mapped[int] = mapped_column(Integer)
    tag_manifest_blake3: Mapped[str] = mapped_column(String(DIGEST_HEX))


class AuditEvent(Base):
    """One link of the tamper-evident chain: hash = BLAKE3(prev_hash ‖ canonical JSON of the event)."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    actor_user: Mapped[str] = mapped_column(String(64))
    actor_uid: Mapped[int | None] = mapped_column(Integer)
    actor_role: Mapped[str] = mapped_column(String(24))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(255))  # dock port path, socket peer or host
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(DIGEST_HEX))
    hash: Mapped[str] = mapped_column(String(DIGEST_HEX), unique=True)

    __table_args__ = (
        Index("ix_audit_action_time", "action", "at"),
        Index("ix_audit_at", "at"),
    )


class AuditHead(Base):
    """The chain's head as a single row (id 1). Every append locks it first, so concurrent appenders in
    any process queue on it instead of forking the chain; `seq` 0 with 64 zeros is genesis."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(DIGEST_HEX))

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


class InspectionVerdict(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    FAIL = "fail"


class Inspection(Base):
    """One spot check (000 art. 18; 002 art. 22): a seeded sample of a unit's recordings in a period.

    The seed, period, unit and size are kept so anyone can draw the same sample again."""

    __tablename__ = "inspections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(64))
    unit_id: Mapped[int | None] = mapped_column(ForeignKey("units.id"))  # None: every unit
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]  # exclusive
    seed: Mapped[str] = mapped_column(String(64))
    sample_size: Mapped[int] = mapped_column(Integer)
    population: Mapped[int] = mapped_column(Integer)  # recordings in the period when sampled
    note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (CheckConstraint("sample_size >= 0", name="sample_size_non_negative"),)


class InspectionItem(Base):
    """One sampled recording and the reviewer's verdict on it: a line of the inspection ledger."""

    __tablename__ = "inspection_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    inspection_id: Mapped[int] = mapped_column(ForeignKey("inspections.id"))
    recording_id: Mapped[int] = mapped_column(ForeignKey("recordings.id"))
    position: Mapped[int] = mapped_column(Integer)  # order in the sample, from 1
    verdict: Mapped[InspectionVerdict | None] = mapped_column(_enum(InspectionVerdict))
    notes: Mapped[str | None] = mapped_column(Text)
    reviewed_by: Mapped[str | None] = mapped_column(String(64))
    reviewed_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("inspection_id", "recording_id", name="uq_inspection_items_inspection_recording"),
        Index("ix_inspection_items_recording", "recording_id"),
    )


# The statistics report (001 art. 28) aggregates a period's recordings per unit and officer in one pass:
# grouped in this index's order and covered by it, it never reads the table (20 ms for a month of a
# million recordings on SQLite, against 160 ms through ix_recordings_unit_time plus table lookups).
Index(
    "ix_recordings_report",
    Recording.unit_id,
    Recording.officer_id,
    Recording.recorded_at,
    Recording.size,
    Recording.duration_s,
    Recording.ingested_at,
    Recording.deadline_at,
)
# The same columns led by the time, for PostgreSQL, which cannot skip-scan the index above: a month is
# then an index-only range instead of a bitmap scan of the period's table rows; with the id, so is the
# join of the period's recordings to their gap flags.
Index(
    "ix_recordings_period",
    Recording.recorded_at,
    Recording.unit_id,
    Recording.officer_id,
    Recording.size,
    Recording.duration_s,
    Recording.ingested_at,
    Recording.deadline_at,
    Recording.id,
)
