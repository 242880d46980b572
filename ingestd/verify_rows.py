"""Catalog rows that carry custody meaning, checked against the audit events that made them.

The chain proves the events; the rows are what the station acts on (a retention class decides a purge,
an approval's expiry decides an export). Someone who can write the catalog but not the key could edit a
row and leave the chain alone, so every such row is replayed from its events and compared:
- a recording's retention class, tags and legal hold (recording.ingest, .classify, .hold, .release);
- an approval's every field (approval.create, approval.revoke);
- each custody row (custody.check-in, custody.check-out), matched one to one.
A row with no event that made it is "row-unaudited", an event whose row is gone "row-missing", a row
that differs from its events "row-mismatch". Trust follows the chain: run it after `verify_chain`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from store.checkpoints import format_utc
from store.models import Approval, AuditEvent, Camera, CustodyEvent, Officer, Recording, RetentionClass

_BATCH = 1000
# What a recording is at ingest (session.py sets exactly these), before any event changes it.
_INGESTED_CLASS = RetentionClass.ROUTINE.value
# The approval columns approval.create records, in its details' names.
_APPROVAL_FIELDS = (
    "approver",
    "requested_by",
    "purpose",
    "scope_case_id",
    "scope_recording_ids",
    "allows_confidential",
    "created_at",
    "expires_at",
    "revoked_at",
)
_APPROVAL_TIMES = frozenset({"created_at", "expires_at", "revoked_at"})
_ACTIONS = (
    "recording.ingest",
    "recording.classify",
    "recording.hold",
    "recording.release",
    "approval.create",
    "approval.revoke",
    "custody.check-in",
    "custody.check-out",
)


class RowProblem(NamedTuple):
    kind: str  # "row-mismatch", "row-unaudited" or "row-missing"
    subject: str  # "recording:<id>", "approval:<id>" or "camera:<serial>"
    detail: str


@dataclass
class _RecordingState:
    seq: int  # the last event that set it
    retention_class: str = _INGESTED_CLASS
    tags: list[str] = field(default_factory=list)
    legal_hold: bool = False


@dataclass
class _Replay:
    recordings: dict[int, _RecordingState] = field(default_factory=dict)
    approvals: dict[int, tuple[int, dict[str, Any]]] = field(default_factory=dict)  # id -> (seq, fields)
    custody: Counter[tuple[Any, ...]] = field(default_factory=Counter)
    custody_seq: dict[tuple[Any, ...], int] = field(default_factory=dict)


def _instant(value: object) -> str | None:
    """One form for a time from a row (datetime) or from event details (ISO text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return repr(value)
    return format_utc(value)


def _id(subject: str, prefix: str) -> int | None:
    kind, _, rest = subject.partition(":")
    return int(rest) if kind == prefix and rest.isdigit() else None


def _custody_key(*fields: object) -> tuple[Any, ...]:
    """(kind, camera serial, at, officer number, actor, actor role, dock session, note)."""
    kind, serial, at, *rest = fields
    return (kind, serial, _instant(at), *rest)


def _replay(session: Session) -> _Replay:
    replay = _Replay()
    events = session.execute(
        select(
            AuditEvent.seq,
            AuditEvent.action,
            AuditEvent.subject,
            AuditEvent.at,
            AuditEvent.actor_user,
            AuditEvent.actor_role,
            AuditEvent.details,
        )
        .where(AuditEvent.action.in_(_ACTIONS), AuditEvent.outcome == "ok")
        .order_by(AuditEvent.seq)
        .execution_options(yield_per=_BATCH)
    )
    for event in events:
        details: Mapping[str, Any] = event.details or {}
        action, seq = event.action, event.seq
        if action.startswith("recording."):
            _replay_recording(replay, action, seq, _id(event.subject, "recording"), details)
        elif action == "approval.create":
            approval_id = _id(event.subject, "approval")
            if approval_id is not None:
                fields = {name: details[name] for name in _APPROVAL_FIELDS if name in details}
                replay.approvals[approval_id] = (seq, fields)
        elif action == "approval.revoke":
            approval_id = _id(event.subject, "approval")
            if approval_id in replay.approvals:
                replay.approvals[approval_id][1]["revoked_at"] = format_utc(event.at)
        else:  # custody
            key = _custody_key(
                action.removeprefix("custody."),
                event.subject.removeprefix("camera:"),
                event.at,
                details.get("officer"),
                event.actor_user,
                event.actor_role,
                details.get("dock_session"),
                details.get("note"),
            )
            replay.custody[key] += 1
            replay.custody_seq[key] = seq
    return replay


def _replay_recording(
    replay: _Replay, action: str, seq: int, recording_id: int | None, details: Mapping[str, Any]
) -> None:
    if recording_id is None:
        return
    if action == "recording.ingest":
        replay.recordings[recording_id] = _RecordingState(seq)
        return
    state = replay.recordings.get(recording_id)
    if state is None:  # a change to a recording never ingested: its row is reported as unaudited
        return
    changes = details.get("changes") or {}
    state.seq = seq
    if "retention_class" in changes:
        state.retention_class = changes["retention_class"][1]
    if "tags" in changes:
        state.tags = sorted(changes["tags"][1])
    if "legal_hold" in changes:
        state.legal_hold = bool(changes["legal_hold"][1])


def _check_recordings(session: Session, replay: _Replay) -> Iterator[RowProblem]:
    seen: set[int] = set()
    rows = session.execute(
        select(Recording.id, Recording.retention_class, Recording.retention_tags, Recording.legal_hold)
        .order_by(Recording.id)
        .execution_options(yield_per=_BATCH)
    )
    for row in rows:
        subject = f"recording:{row.id}"
        seen.add(row.id)
        state = replay.recordings.get(row.id)
        if state is None:
            yield RowProblem("row-unaudited", subject, "no recording.ingest event made this recording")
            continue
        found = {
            "retention_class": str(row.retention_class),
            "tags": sorted(row.retention_tags or ()),
            "legal_hold": bool(row.legal_hold),
        }
        expected = {
            "retention_class": state.retention_class,
            "tags": state.tags,
            "legal_hold": state.legal_hold,
        }
        for name, value in found.items():
            if value != expected[name]:
                yield RowProblem(
                    "row-mismatch",
                    subject,
                    f"{name} is {value}, but the audit events (last: seq {state.seq}) say {expected[name]}",
                )
    for recording_id in sorted(set(replay.recordings) - seen):
        state = replay.recordings[recording_id]
        yield RowProblem(
            "row-missing",
            f"recording:{recording_id}",
            f"recorded by the audit chain (seq {state.seq}) but not in the catalog",
        )


def _check_approvals(session: Session, replay: _Replay) -> Iterator[RowProblem]:
    seen: set[int] = set()
    for approval in session.scalars(select(Approval).order_by(Approval.id)):
        subject = f"approval:{approval.id}"
        seen.add(approval.id)
        made = replay.approvals.get(approval.id)
        if made is None:
            yield RowProblem("row-unaudited", subject, "no approval.create event made this approval")
            continue
        seq, fields = made
        for name, recorded in fields.items():
            value, expected = getattr(approval, name), recorded
            if name in _APPROVAL_TIMES:
                value, expected = _instant(value), _instant(recorded)
            elif name == "scope_recording_ids":
                value = list(value or [])
            if value != expected:
                yield RowProblem(
                    "row-mismatch",
                    subject,
                    f"{name} is {value}, but its audit events (approval.create seq {seq}, approval.revoke) "
                    f"say {expected}",
                )
    for approval_id in sorted(set(replay.approvals) - seen):
        seq = replay.approvals[approval_id][0]
        yield RowProblem(
            "row-missing",
            f"approval:{approval_id}",
            f"created by audit event seq {seq} but not in the catalog",
        )


def _check_custody(session: Session, replay: _Replay) -> Iterator[RowProblem]:
    unmatched = Counter(replay.custody)
    officer = aliased(Officer)
    rows = session.execute(
        select(CustodyEvent, Camera.device_serial, officer.officer_no)
        .join(Camera, Camera.id == CustodyEvent.camera_id)
        .outerjoin(officer, officer.id == CustodyEvent.officer_id)
        .order_by(CustodyEvent.id)
        .execution_options(yield_per=_BATCH)
    )
    for row, serial, officer_no in rows:
        key = _custody_key(
            str(row.kind),
            serial,
            row.at,
            officer_no,
            row.actor,
            row.actor_role,
            row.dock_session_id,
            row.note,
        )
        if unmatched[key] > 0:
            unmatched[key] -= 1
            continue
        yield RowProblem(
            "row-unaudited",
            f"camera:{serial}",
            f"custody row {row.id} ({row.kind} at {_instant(row.at)}, officer {officer_no}) matches no "
            "custody audit event: inserted or edited outside ingestd",
        )
    for key, count in sorted(unmatched.items(), key=lambda item: replay.custody_seq[item[0]]):
        if count > 0:
            kind, serial, at, officer_no = key[:4]
            yield RowProblem(
                "row-missing",
                f"camera:{serial}",
                f"audit event seq {replay.custody_seq[key]} ({kind} at {at}, officer {officer_no}) has no "
                "matching custody row: deleted or edited outside ingestd",
            )


def verify_rows(session: Session) -> list[RowProblem]:
    """Every custody-relevant row that disagrees with the audit events; empty when all agree."""
    replay = _replay(session)
    return [
        *_check_recordings(session, replay),
        *_check_approvals(session, replay),
        *_check_custody(session, replay),
    ]
