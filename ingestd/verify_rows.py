"""Catalog rows that carry custody meaning, checked against the audit events that made them.

The chain proves the events; the rows are what the station acts on (a retention class decides a purge,
an approval's expiry decides an export). Someone who can write the catalog but not the key could edit a
row and leave the chain alone, so every such row is replayed from its events and compared:
- a recording's bytes (digests, size, path as ingested), ingest time, classification (case, party,
  event, place, confidentiality), retention class, tags, legal hold, deletion notice and purge
  (recording.ingest, .classify, .hold, .release, retention.notice, .purge);
- an approval's every field: who granted it to whom, scope, expiry (approval.create, approval.revoke);
- each custody row (custody.check-in, custody.check-out), matched one to one;
- a stored object's seal, which `verify` checks the file against, as the last recording.ingest of its
  bytes recorded it (weakened, a missing immutable attribute would pass unnoticed);
- a stored object's `evicted_at` (eviction removes the local bytes of a marked object, verify skips
  them), as its store.evict, store.restore and recording.ingest events leave it in chain order.
A row with no event that made it is "row-unaudited", an event whose row is gone "row-missing", a row
that differs from its events "row-mismatch", a value that cannot be decoded "row-unreadable". Trust
follows the chain: run it after `verify_chain`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from ingestd.eviction import evicted_at_on_record
from store.audit import EVENTS, decode_event, undecoded_events
from store.checkpoints import format_utc
from store.models import (
    Approval,
    Camera,
    Confidentiality,
    CustodyEvent,
    Officer,
    Recording,
    RetentionClass,
    StoredObject,
)

_BATCH = 1000
# recording.classify sets these (each change as [before, after], as text).
_CLASSIFICATION = ("case_id", "case_party", "case_name", "event", "place", "confidentiality")
# What a recording is at ingest (session.py sets exactly these), before any event changes it.
_AT_INGEST: dict[str, Any] = {
    **dict.fromkeys(_CLASSIFICATION),
    "confidentiality": Confidentiality.NORMAL.value,
    "retention_class": RetentionClass.ROUTINE.value,
    "tags": [],
    "legal_hold": False,
    "purge_notice_at": None,
    "purged_at": None,
}
# recording.ingest details that name a column of the row (details name -> column).
_INGEST_DETAILS = {"blake3": "blake3", "sha256": "sha256", "size": "size", "path": "original_path"}
_RECORDING_TIMES = ("ingested_at", "purge_notice_at", "purged_at")
# The approval columns approval.create records, in its details' names.
_APPROVAL_FIELDS = (
    "approver",
    "grantee",
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
    "retention.notice",
    "retention.purge",
)
# A purge whose object removal is still to come is "started"; its recordings are purged all the same.
_OUTCOMES = ("ok", "started")
# What a value edited into something undecodable raises while it is read or replayed.
_UNREADABLE = (ValueError, TypeError, KeyError, IndexError, AttributeError)


class RowProblem(NamedTuple):
    kind: str  # "row-mismatch", "row-unaudited", "row-missing" or "row-unreadable"
    subject: str  # "recording:<id>", "approval:<id>" or "camera:<serial>"
    detail: str


@dataclass
class _Expected:
    """A row as its audit events leave it: the fields they set, and the last event that set one."""

    seq: int
    fields: dict[str, Any]


@dataclass
class _Replay:
    recordings: dict[int, _Expected] = field(default_factory=dict)
    seals: dict[str, _Expected] = field(default_factory=dict)  # blake3 -> its last recorded seal
    approvals: dict[int, _Expected] = field(default_factory=dict)
    custody: Counter[tuple[Any, ...]] = field(default_factory=Counter)
    custody_seq: dict[tuple[Any, ...], int] = field(default_factory=dict)
    unreadable: list[RowProblem] = field(default_factory=list)


def _instant(value: object) -> str | None:
    """One form for a time from a row (datetime) or from event details (ISO text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return repr(value)
    return format_utc(value)


def _text(value: object) -> str | None:
    """A classification value as recording.classify records it: text, or None when unset."""
    return None if value is None else str(value)


def _id(subject: str, prefix: str) -> int | None:
    kind, _, rest = subject.partition(":")
    return int(rest) if kind == prefix and rest.isdigit() else None


def _custody_key(*fields: object) -> tuple[Any, ...]:
    """(kind, camera serial, at, officer number, actor, actor role, dock session, note)."""
    kind, serial, at, *rest = fields
    return (kind, serial, _instant(at), *rest)


def _approval_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """The approval fields present in `values` (a row's or an event's), in one comparable form."""
    fields: dict[str, Any] = {}
    for name in _APPROVAL_FIELDS:
        if name in values:
            value = values[name]
            if name in _APPROVAL_TIMES:
                value = _instant(value)
            elif name == "scope_recording_ids":
                value = list(value or [])
            fields[name] = value
    return fields


def _replay(db: Session) -> _Replay:
    replay = _Replay()
    query = undecoded_events(_BATCH).where(EVENTS.c.action.in_(_ACTIONS), EVENTS.c.outcome.in_(_OUTCOMES))
    for row in db.execute(query).mappings():
        try:
            _replay_event(replay, decode_event(row))
        except _UNREADABLE as error:  # an edited event (verify_chain names the edit): replay goes on
            replay.unreadable.append(
                RowProblem(
                    "row-unreadable", f"seq {row['seq']}", f"{row['action']} cannot be replayed: {error}"
                )
            )
    return replay


def _replay_event(replay: _Replay, event: Mapping[str, Any]) -> None:
    details = event["details"] or {}
    if not isinstance(details, Mapping):
        raise TypeError(f"details are a {type(details).__name__}, not an object")
    action, seq, at = event["action"], event["seq"], event["at"]
    if action == "retention.purge":
        for recording_id in details.get("recordings") or ():
            _replay_recording(replay, recording_id, action=action, seq=seq, at=at, details=details)
    elif action.startswith(("recording.", "retention.")):
        recording_id = _id(event["subject"], "recording")
        _replay_recording(replay, recording_id, action=action, seq=seq, at=at, details=details)
    elif action == "approval.create":
        approval_id = _id(event["subject"], "approval")
        if approval_id is not None:
            replay.approvals[approval_id] = _Expected(seq, _approval_fields(details))
    elif action == "approval.revoke":
        made = replay.approvals.get(_id(event["subject"], "approval") or 0)
        if made is not None:
            made.seq = seq
            made.fields["revoked_at"] = _instant(at)
    else:  # custody
        key = _custody_key(
            action.removeprefix("custody."),
            event["subject"].removeprefix("camera:"),
            at,
            details.get("officer"),
            event["actor_user"],
            event["actor_role"],
            details.get("dock_session"),
            details.get("note"),
        )
        replay.custody[key] += 1
        replay.custody_seq[key] = seq


def _replay_recording(
    replay: _Replay,
    recording_id: int | None,
    *,
    action: str,
    seq: int,
    at: datetime,
    details: Mapping[str, Any],
) -> None:
    if recording_id is None:
        return
    if action == "recording.ingest":
        fields = {**_AT_INGEST, "ingested_at": _instant(at)}
        fields.update({column: details[name] for name, column in _INGEST_DETAILS.items() if name in details})
        replay.recordings[recording_id] = _Expected(seq, fields)
        if "seal" in details and "blake3" in details:
            replay.seals[str(details["blake3"])] = _Expected(seq, {"seal": details["seal"]})
        return
    made = replay.recordings.get(recording_id)
    if made is None:  # a change to a recording never ingested: its row is reported as unaudited
        return
    made.seq = seq
    if action == "retention.notice":
        made.fields["purge_notice_at"] = _instant(at)
    elif action == "retention.purge":
        made.fields["purged_at"] = _instant(at)
    else:  # classify, hold, release: each change as [before, after]
        changes = details.get("changes") or {}
        for name in _CLASSIFICATION:
            if name in changes:
                made.fields[name] = changes[name][1]
        if "retention_class" in changes:
            made.fields["retention_class"] = changes["retention_class"][1]
        if "tags" in changes:
            made.fields["tags"] = sorted(changes["tags"][1])
        if "legal_hold" in changes:
            made.fields["legal_hold"] = bool(changes["legal_hold"][1])
        if "purge_notice_at" in changes:
            made.fields["purge_notice_at"] = _instant(changes["purge_notice_at"][1])


def _compare(
    noun: str, made_by: str, rows: Iterable[tuple[int, dict[str, Any]]], expected: Mapping[int, _Expected]
) -> Iterator[RowProblem]:
    """Each row (id, its fields) against what its events say; then the events whose row is gone."""
    seen: set[int] = set()
    for row_id, found in rows:
        subject = f"{noun}:{row_id}"
        seen.add(row_id)
        made = expected.get(row_id)
        if made is None:
            yield RowProblem("row-unaudited", subject, f"no {made_by} event made this {noun}")
            continue
        for name, value in made.fields.items():
            if found[name] != value:
                yield RowProblem(
                    "row-mismatch",
                    subject,
                    f"{name} is {found[name]}, but its audit events (last: seq {made.seq}) say {value}",
                )
    for row_id in sorted(set(expected) - seen):
        yield RowProblem(
            "row-missing",
            f"{noun}:{row_id}",
            f"made by the audit chain (last event: seq {expected[row_id].seq}) but not in the catalog",
        )


def _check_recordings(db: Session, replay: _Replay) -> Iterator[RowProblem]:
    columns = (Recording.retention_class, Recording.retention_tags, Recording.legal_hold)
    classification = [getattr(Recording, name) for name in _CLASSIFICATION]
    copied = [getattr(Recording, column) for column in _INGEST_DETAILS.values()]
    times = [getattr(Recording, column) for column in _RECORDING_TIMES]
    rows = db.execute(
        select(Recording.id, *columns, *classification, *copied, *times)
        .order_by(Recording.id)
        .execution_options(yield_per=_BATCH)
    )
    found = (
        (
            row.id,
            {
                "retention_class": str(row.retention_class),
                "tags": sorted(row.retention_tags or ()),
                "legal_hold": bool(row.legal_hold),
                **{name: _text(getattr(row, name)) for name in _CLASSIFICATION},
                **{column: getattr(row, column) for column in _INGEST_DETAILS.values()},
                **{column: _instant(getattr(row, column)) for column in _RECORDING_TIMES},
            },
        )
        for row in rows
    )
    return _compare("recording", "recording.ingest", found, replay.recordings)


def _check_seals(db: Session, replay: _Replay) -> Iterator[RowProblem]:
    """Only objects whose ingest recorded a seal: events from before seals were recorded say nothing."""
    rows = db.execute(
        select(StoredObject.blake3, StoredObject.seal)
        .order_by(StoredObject.blake3)
        .execution_options(yield_per=_BATCH)
    )
    for blake3, seal in rows:
        made = replay.seals.get(blake3)
        if made is not None and str(seal) != made.fields["seal"]:
            yield RowProblem(
                "row-mismatch",
                f"object:{blake3}",
                f"seal is {seal}, but its audit events (last: seq {made.seq}) say {made.fields['seal']}",
            )


def _check_evictions(db: Session, replay: _Replay) -> Iterator[RowProblem]:
    """An eviction time put back after an ingest or a failed removal undid it is as wrong as a new one."""
    del replay  # evictions have their own replay, which eviction itself trusts too
    on_record = evicted_at_on_record(db)
    rows = db.execute(
        select(StoredObject.blake3, StoredObject.evicted_at)
        .where(StoredObject.removed_at.is_(None))
        .order_by(StoredObject.blake3)
        .execution_options(yield_per=_BATCH)
    )
    for blake3, evicted_at in rows:
        expected = on_record.get(blake3)
        if _instant(evicted_at) != _instant(expected):
            yield RowProblem(
                "row-mismatch",
                f"object:{blake3}",
                f"evicted_at is {_instant(evicted_at) or 'unset'}, but its audit events leave it "
                f"{_instant(expected) or 'unset'}: local bytes may be lost or about to be removed",
            )


def _check_approvals(db: Session, replay: _Replay) -> Iterator[RowProblem]:
    approvals = db.scalars(select(Approval).order_by(Approval.id))
    found = (
        (a.id, _approval_fields({name: getattr(a, name) for name in _APPROVAL_FIELDS})) for a in approvals
    )
    return _compare("approval", "approval.create", found, replay.approvals)


def _check_custody(db: Session, replay: _Replay) -> Iterator[RowProblem]:
    unmatched = Counter(replay.custody)
    officer = aliased(Officer)
    rows = db.execute(
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


def verify_rows(db: Session) -> list[RowProblem]:
    """Every custody-relevant row that disagrees with the audit events; empty when all agree. A value
    that cannot be decoded is a problem named with its table or event, never a crash."""
    replay = _replay(db)
    problems = list(replay.unreadable)
    checks = (
        ("recordings", _check_recordings),
        ("stored_objects", _check_seals),
        ("stored_objects", _check_evictions),
        ("approvals", _check_approvals),
        ("custody_events", _check_custody),
    )
    for table, check in checks:
        try:
            problems.extend(check(db, replay))
        except _UNREADABLE as error:
            problems.append(
                RowProblem("row-unreadable", table, f"a row cannot be read, the rest is unchecked: {error}")
            )
    return problems
