"""What each bay tile shows, read from the catalog: the dock's live progress and its current session only.

Guarantees: a tile carries the camera and officer of the session now on that dock and nothing older (an
empty or newly queued dock shows no name); "safe" is derived from the session's recorded end (DONE, no
failed file, and a deletion that was started also finished), never from progress reaching 100 %.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ingestd.config import short_port_name
from ingestd.control import queries
from ingestd.session import DELETE_ORIGINALS
from store.models import (
    AuditEvent,
    Camera,
    CustodyEvent,
    CustodyKind,
    Dock,
    DockVisit,
    Officer,
    SessionState,
)

Phase = Literal["idle", "working", "safe", "attention"]

# Dock states in which the dock's latest session row is not (yet) this camera's: a new camera waits.
_BEFORE_SESSION = frozenset({"empty", "queued"})
_WORDS = {
    "queued": "waiting for a free slot",
    "identifying": "identifying the camera",
    "syncing": "setting the camera's clock",
    "awaiting-storage": "waiting for the camera's storage",
    "ingesting": "copying",
}


@dataclass(frozen=True)
class _Current:
    """A dock's latest session, with the facts a tile needs."""

    session_id: int
    state: SessionState
    ended: bool
    serial: str | None
    battery_percent: int | None
    files_total: int
    files_done: int
    files_failed: int


def _current_sessions(db: Session) -> dict[str, _Current]:
    latest = select(DockVisit.dock_id, func.max(DockVisit.id).label("session_id")).group_by(DockVisit.dock_id)
    latest_ids = latest.subquery()
    rows = db.execute(
        select(Dock.port, DockVisit, Camera.device_serial)
        .join(latest_ids, latest_ids.c.dock_id == Dock.id)
        .join(DockVisit, DockVisit.id == latest_ids.c.session_id)
        .outerjoin(Camera, Camera.id == DockVisit.camera_id)
    ).all()
    return {
        port: _Current(
            session_id=row.id,
            state=row.state,
            ended=row.ended_at is not None,
            serial=serial,
            battery_percent=row.battery_percent,
            files_total=row.files_total,
            files_done=row.files_done,
            files_failed=row.files_failed,
        )
        for port, row, serial in rows
    }


def _officer_names(db: Session, session_ids: list[int]) -> dict[int, str]:
    """The officer each session's check-in recorded (the camera's holder, else its registered officer)."""
    if not session_ids:
        return {}
    rows = db.execute(
        select(CustodyEvent.dock_session_id, Officer.name)
        .join(Officer, Officer.id == CustodyEvent.officer_id)
        .where(CustodyEvent.dock_session_id.in_(session_ids), CustodyEvent.kind == CustodyKind.CHECK_IN)
    ).all()
    return {int(session_id): name for session_id, name in rows if session_id is not None}


def _unfinished_deletions(db: Session, session_ids: list[int]) -> set[int]:
    """Sessions whose deletion of originals was started and has no `done` event."""
    if not session_ids:
        return set()
    subjects = {f"dock_session:{session_id}": session_id for session_id in session_ids}
    outcomes: dict[int, set[str]] = {}
    for subject, outcome in db.execute(
        select(AuditEvent.subject, AuditEvent.outcome).where(
            AuditEvent.action == DELETE_ORIGINALS, AuditEvent.subject.in_(list(subjects))
        )
    ).all():
        outcomes.setdefault(subjects[subject], set()).add(outcome)
    return {session_id for session_id, seen in outcomes.items() if "done" not in seen}


def phase_of(dock_state: str, current: _Current | None, unfinished_deletion: bool) -> tuple[Phase, str]:
    """The tile's phase and its words, from the dock's live state and its current session."""
    if dock_state == "empty":
        return "idle", "free"
    if current is None or not current.ended:
        return "working", _WORDS.get(dock_state, dock_state)
    if current.state is SessionState.DONE:
        if current.files_failed:
            return "attention", f"{current.files_failed} file(s) not stored: see the station operator"
        if unfinished_deletion:
            return "attention", "clearing the camera did not finish: see the station operator"
        return "safe", "done, safe to undock"
    return "attention", "stopped: see the station operator"


def bays(db: Session, dock_label: Callable[[str], str] = short_port_name) -> list[dict[str, Any]]:
    """One tile per known dock, in port order, as plain JSON values; `dock_label` names a port (the
    configured `[[dock]]` label, else its short name)."""
    docks = queries.docks(db, dock_label)
    current = _current_sessions(db)
    ids = [c.session_id for c in current.values()]
    officers, unfinished = _officer_names(db, ids), _unfinished_deletions(db, ids)
    return [_tile(dock, current.get(dock["port"]), officers, unfinished) for dock in docks]


def _tile(
    dock: Mapping[str, Any], current: _Current | None, officers: Mapping[int, str], unfinished: set[int]
) -> dict[str, Any]:
    state = str(dock["state"])
    # A new camera waits on the dock while the latest session row is still the previous camera's.
    if current is not None and current.ended and state in _BEFORE_SESSION:
        current = None
    phase, words = phase_of(state, current, current is not None and current.session_id in unfinished)
    tile: dict[str, Any] = {
        "name": dock["label"],
        "phase": phase,
        "words": words,
        "serial": None,
        "officer": None,
        "battery_percent": None,
        "percent": None,
        "eta_s": None,
        "files_done": None,
        "files_total": None,
    }
    if phase == "idle":
        return tile
    if current is not None:
        tile.update(
            serial=current.serial,
            officer=officers.get(current.session_id),
            battery_percent=current.battery_percent,
            files_done=current.files_done,
            files_total=current.files_total,
        )
    if phase == "working":
        tile.update(percent=dock["percent"], eta_s=dock["eta_s"])
    elif phase == "safe":
        tile["percent"] = 100.0
    return tile
