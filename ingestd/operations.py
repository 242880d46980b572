"""Operator actions on the catalog: custody, explanations, classification, holds, deadline extensions.

Each action takes the caller's open session and appends its audit event inside it, so the change and
the event describing it commit together or not at all. Reads return plain frozen dataclasses, never
ORM rows, so callers cannot change the catalog by accident. A request that names something that does
not exist, or that the rules refuse, raises a `UsageError` (exit code 2) naming what was wrong.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from ingestd import records
from ingestd.config import DeadlinesConfig, RetentionConfig
from ingestd.errors import UsageError
from ingestd.exit_codes import ExitCode
from ingestd.policies.custody import attribute_checkout
from ingestd.policies.deadlines import deadline_basis, extend_deadline, lateness, recording_end
from ingestd.policies.retention import RetentionRules, long_term_reasons, normalize_tag
from ingestd.purge import retention_facts
from store.audit import Actor, AuditLog, Role
from store.models import (
    Camera,
    Confidentiality,
    CustodyEvent,
    CustodyKind,
    Flag,
    FlagKind,
    FlagStatus,
    Officer,
    Recording,
    RetentionClass,
)
from store.times import iso

DEVICE_SERIAL_MAX = 7  # GA/T 947.4 cSerial[7]
# Who may lower a recording's protection: drop a long-term reason, its retention class or its
# confidentiality. The same roles lift a hold. Levels are ordered as the enums list them, lowest first.
PROTECTION_LOWERERS = frozenset({Role.ADMIN, Role.APPROVER})


class OperationError(UsageError):
    """Root of the refusals of an operator action."""

    wire_code = "operation"


class UnknownCameraError(OperationError):
    template = "no camera with device serial {serial!r} in the catalog"
    wire_code = "unknown-camera"


class UnknownOfficerError(OperationError):
    template = "no officer with number {officer_no!r} in the catalog"
    wire_code = "unknown-officer"


class UnknownFlagError(OperationError):
    template = "no flag with id {flag_id}"
    wire_code = "unknown-flag"


class UnknownRecordingError(OperationError):
    template = "no recording with id {ids}"
    wire_code = "unknown-recording"


class RefusedError(OperationError):
    template = "{detail}"
    wire_code = "refused"


class LoweringNotAllowedError(OperationError):
    """Lowering protection needs a stronger role than the one that may classify."""

    template = "permission denied: {detail}"
    exit_code = ExitCode.PERMISSION_DENIED  # like a command the caller's roles do not allow
    wire_code = "lowering-not-allowed"


# --- custody ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CustodyEntry:
    """One line of the handover register."""

    id: int
    at: datetime
    kind: str
    device_serial: str
    officer_no: str | None
    officer_name: str | None
    actor: str
    actor_role: str
    dock_session_id: int | None
    note: str | None


def _camera(db: Session, device_serial: str) -> Camera:
    serial = device_serial.strip()
    if not serial or len(serial) > DEVICE_SERIAL_MAX:
        raise RefusedError(detail=f"{device_serial!r} is not a device serial (1-7 characters)")
    camera = db.scalar(select(Camera).where(Camera.device_serial == serial))
    if camera is None:
        raise UnknownCameraError(serial=serial)
    return camera


def _officer(db: Session, officer_no: str) -> Officer:
    officer = records.officer_by_number(db, officer_no.strip())
    if officer is None:
        raise UnknownOfficerError(officer_no=officer_no)
    return officer


def _entry(event: CustodyEvent, serial: str, officer: Officer | None) -> CustodyEntry:
    return CustodyEntry(
        id=event.id,
        at=event.at,
        kind=event.kind.value,
        device_serial=serial,
        officer_no=officer.officer_no if officer else None,
        officer_name=officer.name if officer else None,
        actor=event.actor,
        actor_role=event.actor_role,
        dock_session_id=event.dock_session_id,
        note=event.note,
    )


def checkout(
    db: Session,
    audit: AuditLog,
    *,
    actor: Actor,
    now: datetime,
    device_serial: str,
    officer_no: str | None = None,
) -> CustodyEntry:
    """Check a camera out (000 art. 10): to the officer a clerk names, else its assigned officer, else
    unassigned. The user who ran the command is always the recorded actor.

    A camera already out (the daemon checks out on undock) is re-attributed: the holder changes but
    the time it went out does not, so a clerk's naming neither resets nor duplicates an overdue flag.
    """
    camera = _camera(db, device_serial)
    assigned = camera.assigned_officer.officer_no if camera.assigned_officer else None
    attribution = attribute_checkout(officer_no, actor.user, assigned)
    officer = _officer(db, attribution.officer_no) if attribution.officer_no else None
    out_since = camera.checked_out_at
    note: str = attribution.basis
    if out_since is not None:
        previous = camera.holder.officer_no if camera.holder else "unassigned"
        note = f"{attribution.basis}; re-attributed (was {previous}, out since {iso(out_since)})"
    event = records.custody_event(
        db,
        audit,
        camera=camera,
        kind=CustodyKind.CHECK_OUT,
        officer=officer,
        actor=actor,
        now=now,
        note=note,
    )
    if out_since is not None:
        camera.checked_out_at = out_since
    return _entry(event, camera.device_serial, officer)


def checkin(
    db: Session,
    audit: AuditLog,
    *,
    actor: Actor,
    now: datetime,
    device_serial: str,
    note: str | None = None,
) -> CustodyEntry:
    """Manual check-in, for footage brought in on a card reader rather than docked. The officer
    recorded is the one holding it (else its assigned officer): the person handing it back."""
    camera = _camera(db, device_serial)
    officer = camera.holder or camera.assigned_officer
    text = note.strip() if note and note.strip() else "manual check-in"
    event = records.custody_event(
        db,
        audit,
        camera=camera,
        kind=CustodyKind.CHECK_IN,
        officer=officer,
        actor=actor,
        now=now,
        note=text,
    )
    return _entry(event, camera.device_serial, officer)


def custody_history(
    db: Session, *, device_serial: str | None = None, officer_no: str | None = None
) -> list[CustodyEntry]:
    """The handover register, oldest first: of one camera, of one officer (一人一档), or of all."""
    if device_serial is not None and officer_no is not None:
        raise RefusedError(detail="give a device or an officer, not both")
    holder = aliased(Officer)
    query = (
        select(CustodyEvent, Camera.device_serial, holder)
        .join(Camera, Camera.id == CustodyEvent.camera_id)
        .outerjoin(holder, holder.id == CustodyEvent.officer_id)
        .order_by(CustodyEvent.at, CustodyEvent.id)
    )
    if device_serial is not None:
        query = query.where(CustodyEvent.camera_id == _camera(db, device_serial).id)
    if officer_no is not None:
        query = query.where(CustodyEvent.officer_id == _officer(db, officer_no).id)
    return [_entry(event, serial, officer) for event, serial, officer in db.execute(query).all()]


# --- flags ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlagView:
    id: int
    kind: str
    status: str
    raised_at: datetime
    device_serial: str | None
    recording_id: int | None
    dock_session_id: int | None
    dedup_key: str
    details: dict[str, Any]
    explanation: str | None
    explained_by: str | None
    explained_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        """The form handed to `ingestctl flags --json` and to the notify command."""
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "raised_at": iso(self.raised_at),
            "device_serial": self.device_serial,
            "recording_id": self.recording_id,
            "dock_session_id": self.dock_session_id,
            "dedup_key": self.dedup_key,
            "details": self.details,
            "explanation": self.explanation,
            "explained_by": self.explained_by,
            "explained_at": iso(self.explained_at) if self.explained_at else None,
        }


def flag_view(flag: Flag, device_serial: str | None) -> FlagView:
    return FlagView(
        id=flag.id,
        kind=flag.kind.value,
        status=flag.status.value,
        raised_at=flag.raised_at,
        device_serial=device_serial,
        recording_id=flag.recording_id,
        dock_session_id=flag.dock_session_id,
        dedup_key=flag.dedup_key,
        details=dict(flag.details or {}),
        explanation=flag.explanation,
        explained_by=flag.explained_by,
        explained_at=flag.explained_at,
    )


def list_flags(db: Session, *, include_closed: bool = False) -> list[FlagView]:
    """Open flags, oldest first; with `include_closed`, the whole history (explained and resolved too)."""
    query = (
        select(Flag, Camera.device_serial)
        .outerjoin(Camera, Camera.id == Flag.camera_id)
        .order_by(Flag.raised_at, Flag.id)
    )
    if not include_closed:
        query = query.where(Flag.status == FlagStatus.OPEN)
    return [flag_view(flag, serial) for flag, serial in db.execute(query).all()]


def explain(
    db: Session, audit: AuditLog, *, actor: Actor, now: datetime, flag_id: int, text: str
) -> FlagView:
    """Record the written explanation of a flag (000 art. 12; 001 art. 23). The flag leaves the open
    list and stays in history. An explanation is a record: it is never overwritten."""
    explanation = text.strip()
    if not explanation:
        raise RefusedError(detail="an explanation needs text (--text)")
    flag = db.get(Flag, flag_id, with_for_update=True)
    if flag is None:
        raise UnknownFlagError(flag_id=flag_id)
    if flag.status is not FlagStatus.OPEN:
        raise RefusedError(
            detail=f"flag {flag_id} is already {flag.status.value}"
            + (f" by {flag.explained_by} at {iso(flag.explained_at)}" if flag.explained_at else "")
        )
    flag.explanation = explanation
    flag.explained_by = actor.user
    flag.explained_at = now
    flag.status = FlagStatus.EXPLAINED
    db.flush()
    audit.append(
        db,
        actor=actor,
        action="flag.explain",
        subject=f"flag:{flag.id}",
        at=now,
        details={"kind": flag.kind.value, "dedup_key": flag.dedup_key, "explanation": explanation},
    )
    serial = db.scalar(select(Camera.device_serial).where(Camera.id == flag.camera_id))
    return flag_view(flag, serial)


# --- recordings: selection, classification, holds, deadlines ---------------------------------------------


def select_recordings(
    db: Session, recording_ids: Collection[int] = (), in_case: str | None = None
) -> list[Recording]:
    """The recordings named by id, or every recording of a case; purged ones (tombstones) are refused."""
    if bool(recording_ids) == (in_case is not None):
        raise RefusedError(detail="name recordings by id or by --in-case, exactly one of the two")
    if recording_ids:
        wanted = sorted(set(recording_ids))
        found = db.scalars(
            select(Recording).where(Recording.id.in_(wanted)).order_by(Recording.id).with_for_update()
        ).all()
        missing = sorted(set(wanted) - {r.id for r in found})
        if missing:
            raise UnknownRecordingError(ids=", ".join(map(str, missing)))
    else:
        found = db.scalars(
            select(Recording).where(Recording.case_id == in_case).order_by(Recording.id).with_for_update()
        ).all()
        if not found:
            raise RefusedError(detail=f"no recording belongs to case {in_case!r}")
    purged = [r.id for r in found if r.purged_at is not None]
    if purged:
        raise RefusedError(detail=f"recording(s) {', '.join(map(str, purged))} were purged")
    return list(found)


@dataclass(frozen=True, slots=True)
class Change:
    """What one action changed on one recording: field -> [before, after] (empty: nothing changed)."""

    recording_id: int
    changes: dict[str, Any] = field(default_factory=dict)


_TEXT_LIMITS = {"case_id": 64, "case_party": 128, "case_name": 255}


def _tags(values: Iterable[str], option: str) -> set[str]:
    tags = {normalize_tag(value) for value in values}
    if "" in tags:
        raise RefusedError(detail=f"{option}: a tag cannot be empty")
    return tags


def tag(
    db: Session,
    audit: AuditLog,
    *,
    actor: Actor,
    now: datetime,
    retention: RetentionConfig,
    recording_ids: Collection[int] = (),
    in_case: str | None = None,
    case_id: str | None = None,
    case_party: str | None = None,
    case_name: str | None = None,
    event: str | None = None,
    place: str | None = None,
    confidentiality: Confidentiality | None = None,
    add_tags: Collection[str] = (),
    remove_tags: Collection[str] = (),
    retention_class: RetentionClass | None = None,
) -> list[Change]:
    """Classify recordings (002 art. 17; 003 art. 19) and set retention tags, one audit event each.

    A tag that forces long-term retention sets the class to long-term. Removing that tag never lowers
    the class by itself: lowering is an explicit `retention_class`, refused while such a tag remains,
    so footage is never made deletable as a side effect. Lowering protection at all (removing such a
    tag, a lower class or confidentiality) needs an actor in `PROTECTION_LOWERERS`; for anyone else the
    whole request is refused before anything changes.
    """
    text_fields = {
        "case_id": case_id,
        "case_party": case_party,
        "case_name": case_name,
        "event": event,
        "place": place,
    }
    for name, value in text_fields.items():
        limit = _TEXT_LIMITS.get(name)
        if value is not None and limit is not None and len(value) > limit:
            raise RefusedError(detail=f"{name} is {len(value)} characters, at most {limit} fit")
    added, removed = _tags(add_tags, "--tag"), _tags(remove_tags, "--untag")
    if added & removed:
        raise RefusedError(detail=f"tag(s) both added and removed: {', '.join(sorted(added & removed))}")
    wanted: dict[str, Any] = {k: v for k, v in text_fields.items() if v is not None}
    if confidentiality is not None:
        wanted["confidentiality"] = confidentiality
    if not wanted and not added and not removed and retention_class is None:
        raise RefusedError(detail="nothing to set: give a classification, a tag or a class")
    rules = retention.rules()
    results: list[Change] = []
    for recording in select_recordings(db, recording_ids, in_case):
        protected = _protection(recording, rules)
        changes: dict[str, Any] = {}
        for name, value in wanted.items():
            before = getattr(recording, name)
            if before != value:
                changes[name] = [str(before) if before is not None else None, str(value)]
                setattr(recording, name, value)
        tags_before = sorted(recording.retention_tags or ())
        tags_after = sorted((set(tags_before) | added) - removed)
        if tags_after != tags_before:
            changes["tags"] = [tags_before, tags_after]
            recording.retention_tags = tags_after
        reasons = long_term_reasons(retention_facts(recording), rules)
        new_class = retention_class or recording.retention_class
        if reasons:
            if retention_class not in (None, RetentionClass.LONG_TERM):
                raise RefusedError(
                    detail=f"recording {recording.id} must stay long-term while tagged {', '.join(reasons)}"
                )
            new_class = RetentionClass.LONG_TERM
        if new_class is not recording.retention_class:
            changes["retention_class"] = [recording.retention_class.value, new_class.value]
            recording.retention_class = new_class
        lowered = _lowered(protected, _protection(recording, rules))
        if lowered and actor.role not in PROTECTION_LOWERERS:
            raise LoweringNotAllowedError(
                detail=f"recording {recording.id}: {'; '.join(lowered)} lowers its protection, which needs "
                f"the approver or admin role ({actor.user} acts as {actor.role})"
            )
        if changes:
            db.flush()
            audit.append(
                db,
                actor=actor,
                action="recording.classify",
                subject=f"recording:{recording.id}",
                at=now,
                details={"changes": changes, "long_term_reasons": list(reasons)},
            )
        results.append(Change(recording.id, changes))
    return results


@dataclass(frozen=True, slots=True)
class _Protection:
    reasons: frozenset[str]
    retention_class: RetentionClass
    confidentiality: Confidentiality


def _protection(recording: Recording, rules: RetentionRules) -> _Protection:
    reasons = frozenset(long_term_reasons(retention_facts(recording), rules))
    return _Protection(reasons, recording.retention_class, recording.confidentiality)


def _lowered(before: _Protection, after: _Protection) -> list[str]:
    """What a change takes away, worded for the refusal; empty when nothing is lowered."""
    lost = []
    if before.reasons - after.reasons:
        lost.append(f"removing long-term tag(s) {', '.join(sorted(before.reasons - after.reasons))}")
    classes, levels = list(RetentionClass), list(Confidentiality)
    if classes.index(after.retention_class) < classes.index(before.retention_class):
        lost.append(f"retention class {before.retention_class} -> {after.retention_class}")
    if levels.index(after.confidentiality) < levels.index(before.confidentiality):
        lost.append(f"confidentiality {before.confidentiality} -> {after.confidentiality}")
    return lost


def hold(
    db: Session,
    audit: AuditLog,
    *,
    actor: Actor,
    now: datetime,
    reason: str,
    recording_ids: Collection[int] = (),
    in_case: str | None = None,
) -> list[Change]:
    """Place a legal hold: blocks expiry whatever the class. A pending deletion notice is withdrawn, so
    a notice given before the hold never counts after its release: the full notice period runs again."""
    why = reason.strip()
    if not why:
        raise RefusedError(detail="a hold needs a reason (--reason)")
    recordings = select_recordings(db, recording_ids, in_case)
    return _set_hold(db, audit, recordings, held=True, actor=actor, now=now, why=why)


def release(
    db: Session,
    audit: AuditLog,
    *,
    actor: Actor,
    now: datetime,
    reason: str,
    recording_ids: Collection[int] = (),
    in_case: str | None = None,
) -> list[Change]:
    """Lift a legal hold; the recording's class decides again, and any purge starts with a new notice."""
    why = reason.strip()
    if not why:
        raise RefusedError(detail="a release needs a reason (--reason)")
    recordings = select_recordings(db, recording_ids, in_case)
    return _set_hold(db, audit, recordings, held=False, actor=actor, now=now, why=why)


def _set_hold(
    db: Session,
    audit: AuditLog,
    recordings: list[Recording],
    *,
    held: bool,
    actor: Actor,
    now: datetime,
    why: str,
) -> list[Change]:
    """Hold or release each recording not already so, one audit event each."""
    results: list[Change] = []
    for recording in recordings:
        if recording.legal_hold is held:
            results.append(Change(recording.id))
            continue
        reason_after = why if held else None
        changes: dict[str, Any] = {
            "legal_hold": [not held, held],
            "hold_reason": [recording.hold_reason, reason_after],
        }
        if held and recording.purge_notice_at is not None:
            changes["purge_notice_at"] = [iso(recording.purge_notice_at), None]
            recording.purge_notice_at = None
        recording.legal_hold = held
        recording.hold_reason = reason_after
        db.flush()
        audit.append(
            db,
            actor=actor,
            action="recording.hold" if held else "recording.release",
            subject=f"recording:{recording.id}",
            at=now,
            details={"reason": why, "changes": changes},
        )
        results.append(Change(recording.id, changes))
    return results


@dataclass(frozen=True, slots=True)
class Extension:
    recording_id: int
    previous_deadline_at: datetime
    deadline_at: datetime
    working_days: int
    reason: str
    resolved_flag_ids: tuple[int, ...]


def extend(
    db: Session,
    audit: AuditLog,
    *,
    actor: Actor,
    now: datetime,
    deadlines: DeadlinesConfig,
    recording_id: int,
    working_days: int,
    reason: str,
) -> Extension:
    """Extend a recording's upload deadline (003 art. 11: for cause, at most 3 working days from the end
    of the recording). An open LATE flag the new deadline covers is resolved with the reason.

    Deadlines only move later: an extension that would not (a shorter one after a longer one, or the
    same again) changes nothing, writes no audit event and returns the deadline as it stands."""
    recording = db.get(Recording, recording_id, with_for_update=True)
    if recording is None:
        raise UnknownRecordingError(ids=str(recording_id))
    if recording.purged_at is not None:
        raise RefusedError(detail=f"recording {recording_id} was purged")
    basis = deadline_basis(recording_end(recording.recorded_at, recording.duration_s))
    new_deadline = extend_deadline(
        basis,
        reason=reason,
        working_days=working_days,
        calendar=deadlines.calendar(),
        max_working_days=deadlines.max_extension_working_days,
        window=deadlines.window,
    )
    previous = recording.deadline_at
    if new_deadline <= previous:
        return Extension(recording.id, previous, previous, working_days, reason.strip(), ())
    recording.deadline_at = new_deadline
    recording.deadline_extension_reason = reason.strip()
    resolved: list[int] = []
    if lateness(recording.ingested_at, new_deadline) is None:
        late_flags = db.scalars(
            select(Flag).where(
                Flag.recording_id == recording.id, Flag.kind == FlagKind.LATE, Flag.status == FlagStatus.OPEN
            )
        ).all()
        for flag in late_flags:
            flag.status = FlagStatus.RESOLVED
            flag.explanation = f"deadline extended by {working_days} working day(s): {reason.strip()}"
            flag.explained_by = actor.user
            flag.explained_at = now
            resolved.append(flag.id)
    db.flush()
    audit.append(
        db,
        actor=actor,
        action="recording.extend-deadline",
        subject=f"recording:{recording.id}",
        at=now,
        details={
            "previous_deadline_at": iso(previous),
            "deadline_at": iso(new_deadline),
            "working_days": working_days,
            "reason": reason.strip(),
            "resolved_flags": resolved,
        },
    )
    return Extension(recording.id, previous, new_deadline, working_days, reason.strip(), tuple(resolved))
