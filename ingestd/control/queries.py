"""Read-only catalog queries behind `status`, `cameras`, `officers`, `footage` and `audit`.

Guarantees: pure reads in the caller's session, results are plain JSON values (times as UTC ISO 8601),
and every argument is checked: a wrong value or an unknown id raises `BadArgumentError` (exit 2) naming it.
The daemon's handlers and `ingestctl`'s direct-read fallback both call these, so they answer alike.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from ingestd import replication
from ingestd.config import short_port_name
from ingestd.errors import UsageError
from store.audit import Role
from store.models import (
    AuditEvent,
    Camera,
    Confidentiality,
    CustodyEvent,
    CustodyKind,
    Dock,
    DockVisit,
    Flag,
    FlagKind,
    FlagStatus,
    Officer,
    Recording,
    RetentionClass,
    Unit,
)

VERIFY_ACTION = "verify.run"
FOOTAGE_LIMIT_DEFAULT, FOOTAGE_LIMIT_MAX = 50, 1000
AUDIT_LIMIT_DEFAULT, AUDIT_LIMIT_MAX = 100, 10_000
LIST_LIMIT_MAX = 10_000
# Roles that see case details of confidential recordings in a listing; others see them redacted.
CONFIDENTIAL_READERS = frozenset({Role.ADMIN, Role.APPROVER, Role.AUDITOR})
REDACTED = "[confidential]"


class BadArgumentError(UsageError):
    template = "{command}: {detail}"
    wire_code = "bad-argument"


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- arguments -------------------------------------------------------------------------------------


class Args:
    """Typed access to a request's args; anything unexpected is a BadArgumentError naming the key."""

    def __init__(self, command: str, args: Mapping[str, Any], allowed: set[str]) -> None:
        self.command = command
        self.args = args
        unknown = set(args) - allowed
        if unknown:
            self.fail(f"unknown argument(s): {', '.join(sorted(unknown))}")

    def fail(self, detail: str) -> NoReturn:
        raise BadArgumentError(command=self.command, detail=detail)

    def text(self, key: str, max_length: int = 255) -> str | None:
        value = self.args.get(key)
        if value is None:
            return None
        return self._checked_text(key, value, max_length)

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.args.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(f"{key} must be a whole number from {low} to {high}, got {value!r}")
        return int(value)

    def optional_integer(self, key: str, low: int = 0) -> int | None:
        if self.args.get(key) is None:
            return None
        return self.integer(key, 0, low, 2**62)

    def integers(self, key: str, limit: int = LIST_LIMIT_MAX) -> list[int]:
        values = self.args.get(key) or []
        if (
            not isinstance(values, list)
            or len(values) > limit
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
        ):
            self.fail(f"{key} must be a list of at most {limit} positive whole numbers")
        return [int(v) for v in values]

    def texts(self, key: str, max_length: int = 64, limit: int = 100) -> list[str]:
        values = self.args.get(key) or []
        if not isinstance(values, list) or len(values) > limit:
            self.fail(f"{key} must be a list of at most {limit} texts")
        return [self._checked_text(key, value, max_length) for value in values]

    def _checked_text(self, key: str, value: Any, max_length: int) -> str:
        if not isinstance(value, str) or not value.strip() or len(value) > max_length:
            self.fail(f"{key} must be a non-empty text of at most {max_length} characters")
        return value.strip()

    def flag(self, key: str) -> bool:
        value = self.args.get(key, False)
        if not isinstance(value, bool):
            self.fail(f"{key} must be true or false")
        return bool(value)

    def time(self, key: str, zone: ZoneInfo, *, end: bool = False) -> datetime | None:
        """ISO 8601 with an offset, or a date (midnight in the station's zone; the next midnight for
        an `end` bound, so `--until 2026-11-01` includes that day). A time without a zone is refused."""
        raw = self.text(key, 64)
        if raw is None:
            return None
        try:
            day = date.fromisoformat(raw)
        except ValueError:
            pass
        else:
            start = datetime.combine(day + timedelta(days=1) if end else day, time(), zone)
            return start.astimezone(UTC)
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise BadArgumentError(
                command=self.command, detail=f"{key} {raw!r} is not a date or an ISO 8601 time"
            ) from None
        if value.tzinfo is None or value.utcoffset() is None:
            self.fail(f"{key} {raw!r} has no time zone: add one, e.g. {raw}+08:00, or give a date")
        return value.astimezone(UTC)

    def choice(self, key: str, choices: list[str]) -> str | None:
        value = self.text(key, 64)
        if value is not None and value not in choices:
            self.fail(f"{key} must be one of {', '.join(choices)}, got {value!r}")
        return value


# --- status ----------------------------------------------------------------------------------------


def last_verify(db: Session) -> dict[str, Any] | None:
    event = db.scalars(
        select(AuditEvent).where(AuditEvent.action == VERIFY_ACTION).order_by(AuditEvent.at.desc()).limit(1)
    ).first()
    if event is None:
        return None
    details = event.details or {}
    return {
        "at": iso(event.at),
        "outcome": event.outcome,
        "clean": event.outcome == "ok",
        "by": event.actor_user,
        "events_checked": details.get("events_checked"),
        "objects_checked": details.get("objects_checked"),
        "problems": details.get("problems"),
    }


def open_flag_counts(db: Session) -> dict[str, int]:
    rows = db.execute(
        select(Flag.kind, func.count()).where(Flag.status == FlagStatus.OPEN).group_by(Flag.kind)
    ).all()
    return {str(kind): int(count) for kind, count in rows}


def docks(db: Session, dock_label: Callable[[str], str] = short_port_name) -> list[dict[str, Any]]:
    """Every known dock with its label, and the camera and officer of its latest session while a camera
    is on it: kept after the session ends, so a finished dock still says whose camera it is; none once
    the camera is taken (the dock is `empty`)."""
    # Correlated per dock, so each is one seek in ix_dock_sessions_dock rather than a scan of all sessions.
    latest = (
        select(func.max(DockVisit.id)).where(DockVisit.dock_id == Dock.id).correlate(Dock).scalar_subquery()
    )
    checked_in = aliased(CustodyEvent)
    rows = db.execute(
        select(Dock, Camera.device_serial, Officer.name, DockVisit.files_done, DockVisit.files_total)
        .outerjoin(DockVisit, DockVisit.id == latest)
        .outerjoin(Camera, Camera.id == DockVisit.camera_id)
        .outerjoin(
            checked_in,
            and_(checked_in.dock_session_id == DockVisit.id, checked_in.kind == CustodyKind.CHECK_IN),
        )
        .outerjoin(Officer, Officer.id == checked_in.officer_id)
        .order_by(Dock.port)
    ).all()
    found = []
    for dock, latest_serial, latest_officer, files_done, files_total in rows:
        # Taken: no earlier camera or officer shows on a free dock.
        serial, officer_name = (None, None) if dock.state == "empty" else (latest_serial, latest_officer)
        found.append(
            {
                "port": dock.port,
                "label": dock_label(dock.port),
                "state": dock.state,
                "device_serial": serial,
                "officer_name": officer_name,
                "current_file": dock.current_file,
                "bytes_done": dock.bytes_done,
                "bytes_total": dock.bytes_total,
                "percent": round(100 * dock.bytes_done / dock.bytes_total, 1) if dock.bytes_total else None,
                "files_done": files_done,
                "files_total": files_total,
                "rate_bps": dock.rate_bps,
                "eta_s": dock.eta_s,
                "updated_at": iso(dock.updated_at),
            }
        )
    return found


def status(
    db: Session,
    *,
    free_bytes: int | None,
    store_root: str,
    now: datetime,
    dock_label: Callable[[str], str] = short_port_name,
) -> dict[str, Any]:
    dock_rows = [dock for dock in docks(db, dock_label) if dock["state"] != "empty"]  # gone: no row
    return {
        "now": iso(now),
        "docks": dock_rows,
        "active": sum(1 for d in dock_rows if d["state"] not in ("empty", "done", "failed", "unplugged")),
        "queued": sum(1 for d in dock_rows if d["state"] == "queued"),
        "open_flags": open_flag_counts(db),
        "store": {
            "root": store_root,
            "free_bytes": free_bytes,
            "evicted_objects": replication.evicted_totals(db)[0],  # held in the vault only
        },
        "last_verify": last_verify(db),
    }


# --- cameras and officers --------------------------------------------------------------------------


def _officer(officer: Officer | None) -> dict[str, Any] | None:
    return None if officer is None else {"officer_no": officer.officer_no, "name": officer.name}


def cameras(db: Session, raw: Mapping[str, Any]) -> dict[str, Any]:
    args = Args("cameras", raw, {"serial", "unit", "limit"})
    serial, unit_no = args.text("serial", 7), args.text("unit", 12)
    limit = args.integer("limit", LIST_LIMIT_MAX, 1, LIST_LIMIT_MAX)
    assigned, holder = aliased(Officer), aliased(Officer)
    query = (
        select(Camera, Unit.unit_no, assigned, holder)
        .outerjoin(Unit, Unit.id == Camera.unit_id)
        .outerjoin(assigned, assigned.id == Camera.assigned_officer_id)
        .outerjoin(holder, holder.id == Camera.holder_officer_id)
        .order_by(Camera.device_serial)
        .limit(limit)
    )
    if serial is not None:
        query = query.where(Camera.device_serial == serial)
    if unit_no is not None:
        query = query.where(Unit.unit_no == _unit_id_checked(db, args, unit_no))
    docked = set(
        db.scalars(
            select(DockVisit.camera_id).where(DockVisit.ended_at.is_(None), DockVisit.camera_id.is_not(None))
        ).all()
    )
    found = []
    for camera, camera_unit, assigned_officer, holder_officer in db.execute(query).all():
        if camera.id in docked:
            state = "docked"
        elif camera.checked_out_at is not None:
            state = "out"
        else:
            state = "in"
        found.append(
            {
                "device_serial": camera.device_serial,
                "unit_no": camera_unit,
                "driver": camera.driver,
                "state": state,
                "battery_percent": camera.battery_percent,
                "storage_free_bytes": camera.storage_free_bytes,
                "storage_total_bytes": camera.storage_total_bytes,
                "last_clock_offset_s": camera.last_clock_offset_s,
                "clock_state": camera.clock_state,
                "assigned_officer": _officer(assigned_officer),
                "holder": _officer(holder_officer),
                "checked_out_at": iso(camera.checked_out_at),
                "last_docked_at": iso(camera.last_docked_at),
            }
        )
    if serial is not None and not found:
        args.fail(f"no camera with device serial {serial!r}")
    return {"cameras": found}


def _unit_id_checked(db: Session, args: Args, unit_no: str) -> str:
    if db.scalar(select(Unit.id).where(Unit.unit_no == unit_no)) is None:
        args.fail(f"no unit {unit_no!r}")
    return unit_no


def officers(db: Session, raw: Mapping[str, Any]) -> dict[str, Any]:
    args = Args("officers", raw, {"officer", "unit", "limit"})
    officer_no, unit_no = args.text("officer", 6), args.text("unit", 12)
    limit = args.integer("limit", LIST_LIMIT_MAX, 1, LIST_LIMIT_MAX)
    holding = (
        select(Camera.holder_officer_id, func.count().label("held"))
        .where(Camera.holder_officer_id.is_not(None))
        .group_by(Camera.holder_officer_id)
        .subquery()
    )
    query = (
        select(Officer, Unit.unit_no, Unit.name, func.coalesce(holding.c.held, 0))
        .outerjoin(Unit, Unit.id == Officer.unit_id)
        .outerjoin(holding, holding.c.holder_officer_id == Officer.id)
        .order_by(Officer.officer_no)
        .limit(limit)
    )
    if officer_no is not None:
        query = query.where(Officer.officer_no == officer_no)
    if unit_no is not None:
        query = query.where(Unit.unit_no == _unit_id_checked(db, args, unit_no))
    found = [
        {
            "officer_no": officer.officer_no,
            "name": officer.name,
            "unit_no": officer_unit_no,
            "unit_name": unit_name,
            "cameras_held": int(held),
        }
        for officer, officer_unit_no, unit_name, held in db.execute(query).all()
    ]
    if officer_no is not None and not found:
        args.fail(f"no officer {officer_no!r}")
    return {"officers": found}


# --- footage ---------------------------------------------------------------------------------------


def _cursor(value: str | None, args: Args) -> tuple[datetime, int] | None:
    if value is None:
        return None
    at, _, rest = value.rpartition("|")
    try:
        return datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone(UTC), int(rest)
    except ValueError:
        raise BadArgumentError(
            command=args.command, detail=f"cursor {value!r} is not one this command gave"
        ) from None


def footage(db: Session, raw: Mapping[str, Any], *, zone: ZoneInfo, role: Role) -> dict[str, Any]:
    """Recording metadata, newest first, `limit` per page; `next` continues (keyset, index-friendly)."""
    args = Args(
        "footage",
        raw,
        {
            "device",
            "officer",
            "unit",
            "since",
            "until",
            "case",
            "late",
            "flagged",
            "retention_class",
            "limit",
            "cursor",
            "include_purged",
        },
    )
    device, officer_no, unit_no = args.text("device", 7), args.text("officer", 6), args.text("unit", 12)
    since, until = args.time("since", zone), args.time("until", zone, end=True)
    case = args.text("case", 64)
    retention = args.choice("retention_class", [c.value for c in RetentionClass])
    limit = args.integer("limit", FOOTAGE_LIMIT_DEFAULT, 1, FOOTAGE_LIMIT_MAX)
    cursor = _cursor(args.text("cursor", 80), args)
    if since is not None and until is not None and since >= until:
        args.fail("since must be before until")

    query = (
        select(Recording, Camera.device_serial, Officer.officer_no, Officer.name, Unit.unit_no)
        .join(Camera, Camera.id == Recording.camera_id)
        .outerjoin(Officer, Officer.id == Recording.officer_id)
        .outerjoin(Unit, Unit.id == Recording.unit_id)
    )
    # Ids are resolved first so a typo is an error rather than an empty page, and the filter is on the
    # indexed foreign key (ix_recordings_camera_time, _officer_time, _unit_time).
    if device is not None:
        camera_id = db.scalar(select(Camera.id).where(Camera.device_serial == device))
        if camera_id is None:
            args.fail(f"no camera with device serial {device!r}")
        query = query.where(Recording.camera_id == camera_id)
    if officer_no is not None:
        officer_id = db.scalar(select(Officer.id).where(Officer.officer_no == officer_no))
        if officer_id is None:
            args.fail(f"no officer {officer_no!r}")
        query = query.where(Recording.officer_id == officer_id)
    if unit_no is not None:
        unit_id = db.scalar(select(Unit.id).where(Unit.unit_no == unit_no))
        if unit_id is None:
            args.fail(f"no unit {unit_no!r}")
        query = query.where(Recording.unit_id == unit_id)
    if since is not None:
        query = query.where(Recording.recorded_at >= since)
    if until is not None:
        query = query.where(Recording.recorded_at < until)
    if case is not None:
        query = query.where(Recording.case_id == case)
    if retention is not None:
        query = query.where(Recording.retention_class == RetentionClass(retention))
    if args.flag("late"):
        query = query.where(Recording.ingested_at > Recording.deadline_at)
    if args.flag("flagged"):
        query = query.where(exists().where(Flag.recording_id == Recording.id, Flag.status == FlagStatus.OPEN))
    if not args.flag("include_purged"):
        query = query.where(Recording.purged_at.is_(None))
    if cursor is not None:
        at, last_id = cursor
        query = query.where(
            or_(Recording.recorded_at < at, and_(Recording.recorded_at == at, Recording.id < last_id))
        )
    rows = db.execute(
        query.order_by(Recording.recorded_at.desc(), Recording.id.desc()).limit(limit + 1)
    ).all()
    page = rows[:limit]
    ids = [row[0].id for row in page]
    flags: dict[int, list[str]] = {}
    if ids:
        for recording_id, kind in db.execute(
            select(Flag.recording_id, Flag.kind).where(
                Flag.recording_id.in_(ids), Flag.status == FlagStatus.OPEN
            )
        ).all():
            flags.setdefault(int(recording_id), []).append(str(kind))
    vault = replication.vault_states(db, (row[0].blake3 for row in page))
    evicted = replication.evicted_digests(db, (row[0].blake3 for row in page))
    see_confidential = role in CONFIDENTIAL_READERS
    items = []
    for recording, serial, rec_officer_no, officer_name, rec_unit_no in page:
        hidden = recording.confidentiality is not Confidentiality.NORMAL and not see_confidential

        def shown(value: str | None, hidden: bool = hidden) -> str | None:
            return REDACTED if hidden and value else value

        items.append(
            {
                "id": recording.id,
                "device_serial": serial,
                "officer_no": rec_officer_no,
                "officer_name": officer_name,
                "unit_no": rec_unit_no,
                "recorded_at": iso(recording.recorded_at),
                "duration_s": recording.duration_s,
                "size": recording.size,
                "ingested_at": iso(recording.ingested_at),
                "deadline_at": iso(recording.deadline_at),
                "late": recording.ingested_at > recording.deadline_at,
                "open_flags": sorted(flags.get(recording.id, [])),
                "retention_class": str(recording.retention_class),
                "legal_hold": recording.legal_hold,
                "case_id": shown(recording.case_id),
                "case_name": shown(recording.case_name),
                "case_party": shown(recording.case_party),
                "confidentiality": str(recording.confidentiality),
                "original_path": shown(recording.original_path),
                "blake3": recording.blake3,
                "sha256": recording.sha256,
                "purged_at": iso(recording.purged_at),
                "vault": vault.get(recording.blake3),  # replication state; None: not queued
                "evicted": recording.blake3 in evicted,  # held in the vault only; read back from there
            }
        )
    more = len(rows) > limit
    last = page[-1][0] if page else None
    return {
        "recordings": items,
        "count": len(items),
        "next": f"{iso(last.recorded_at)}|{last.id}" if more and last is not None else None,
    }


# --- audit -----------------------------------------------------------------------------------------

CJIS_FIELDS = ("event_type", "time", "place", "source", "outcome", "user")


def audit_events(db: Session, raw: Mapping[str, Any], *, zone: ZoneInfo) -> dict[str, Any]:
    """Audit events carrying the CJIS 5.4 fields, `limit` per page: in chain order after `after_seq`
    (exports), or with `newest_first` before `before_seq` (what an operator reads first)."""
    args = Args(
        "audit",
        raw,
        {"action", "actor", "outcome", "since", "until", "limit", "after_seq", "before_seq", "newest_first"},
    )
    action, actor = args.text("action", 64), args.text("actor", 64)
    outcome = args.text("outcome", 16)
    since, until = args.time("since", zone), args.time("until", zone, end=True)
    limit = args.integer("limit", AUDIT_LIMIT_DEFAULT, 1, AUDIT_LIMIT_MAX)
    after_seq, before_seq = args.optional_integer("after_seq"), args.optional_integer("before_seq")
    newest_first = args.flag("newest_first")
    if not newest_first and before_seq is not None:
        args.fail("before_seq pages newest first: give newest_first too")
    query = select(AuditEvent)
    if action is not None:
        # "ctl.*" matches a family; otherwise exact (ix_audit_action_time).
        if action.endswith("*"):
            prefix = action[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(AuditEvent.action.like(f"{prefix}%", escape="\\"))
        else:
            query = query.where(AuditEvent.action == action)
    if actor is not None:
        query = query.where(AuditEvent.actor_user == actor)
    if outcome is not None:
        query = query.where(AuditEvent.outcome == outcome)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if until is not None:
        query = query.where(AuditEvent.at < until)
    if after_seq is not None:
        query = query.where(AuditEvent.seq > after_seq)
    if before_seq is not None:
        query = query.where(AuditEvent.seq < before_seq)
    order = AuditEvent.seq.desc() if newest_first else AuditEvent.seq
    rows = db.scalars(query.order_by(order).limit(limit + 1)).all()
    page = rows[:limit]
    place = socket.gethostname()
    events = [
        {
            "seq": event.seq,
            "event_type": event.action,
            "time": iso(event.at),
            "place": place,
            "source": event.source,
            "outcome": event.outcome,
            "user": event.actor_user,
            "uid": event.actor_uid,
            "role": event.actor_role,
            "subject": event.subject,
            "details": event.details,
            "hash": event.hash,
        }
        for event in page
    ]
    return {
        "events": events,
        "count": len(events),
        "next_after_seq": page[-1].seq if len(rows) > limit and page and not newest_first else None,
        "next_before_seq": page[-1].seq if len(rows) > limit and page and newest_first else None,
    }


def flag_kinds() -> list[str]:
    return [kind.value for kind in FlagKind]
