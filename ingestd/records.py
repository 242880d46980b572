"""Catalog writes of a dock session. Each custody-relevant change commits with its audit event.

These functions take an open SQLAlchemy session (the caller's transaction) so that a change and the
audit event describing it are one unit: both commit or neither does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from drivers.base import CameraIdentity, ClockSync
from store.audit import Actor, AuditLog
from store.models import (
    Camera,
    ClockReading,
    CustodyEvent,
    CustodyKind,
    Dock,
    DockVisit,
    Officer,
    SessionState,
    Unit,
)


def daemon_actor(port: str) -> Actor:
    """Changes the daemon makes on its own, attributed to the dock they came from."""
    return Actor.system(source=f"dock:{port}")


def get_or_create_dock(db: Session, port: str, now: datetime) -> Dock:
    dock = db.scalar(select(Dock).where(Dock.port == port))
    if dock is not None:
        return dock
    # A session's first step and the progress flush can both create a new port's row at once. On
    # PostgreSQL both see none; ON CONFLICT makes the second wait for the first and take its row.
    dialect = postgresql if db.get_bind().dialect.name == "postgresql" else sqlite
    new_dock = {"port": port, "state": "empty", "updated_at": now, "bytes_done": 0, "bytes_total": 0}
    db.execute(dialect.insert(Dock).values(new_dock).on_conflict_do_nothing(index_elements=["port"]))
    return db.scalars(select(Dock).where(Dock.port == port)).one()


def open_dock_session(db: Session, port: str, now: datetime) -> DockVisit:
    dock = get_or_create_dock(db, port, now)
    dock_session = DockVisit(
        dock_id=dock.id,
        state=SessionState.IDENTIFYING,
        started_at=now,
        files_total=0,
        files_done=0,
        files_failed=0,
        bytes_total=0,
        bytes_done=0,
    )
    db.add(dock_session)
    dock.state = SessionState.IDENTIFYING.value
    dock.current_file = None
    dock.bytes_done = dock.bytes_total = 0
    dock.rate_bps = dock.eta_s = None
    dock.updated_at = now
    db.flush()
    return dock_session


def _unit(db: Session, unit_no: str, name: str) -> Unit | None:
    if not unit_no:
        return None
    unit = db.scalar(select(Unit).where(Unit.unit_no == unit_no))
    if unit is None:
        unit = Unit(unit_no=unit_no, name=name)
        db.add(unit)
    elif name and unit.name != name:
        unit.name = name
    return unit


def officer_by_number(db: Session, officer_no: str) -> Officer | None:
    return db.scalar(select(Officer).where(Officer.officer_no == officer_no))


def _officer(
    db: Session, officer_no: str, name: str, unit: Unit | None
) -> tuple[Officer | None, dict[str, tuple[str, str]]]:
    """The officer a camera names, registered on first sight. The registry is authoritative after
    that: what a camera says about a known officer never changes the officer (nor so the footage
    filed under them); a disagreement is returned, field -> (registered, reported)."""
    if not officer_no:
        return None, {}
    officer = officer_by_number(db, officer_no)
    if officer is None:
        officer = Officer(officer_no=officer_no, name=name or officer_no, unit=unit)
        db.add(officer)
        return officer, {}
    disagreement: dict[str, tuple[str, str]] = {}
    if name and name != officer.name:
        disagreement["officer_name"] = (officer.name, name)
    if unit is not None and officer.unit is not None and unit.unit_no != officer.unit.unit_no:
        disagreement["unit_no"] = (officer.unit.unit_no, unit.unit_no)
    if unit is not None and officer.unit is None:
        officer.unit = unit  # filling a gap, not overriding the registry
    return officer, disagreement


@dataclass(frozen=True)
class Registration:
    camera: Camera
    officer: Officer | None
    identity_changed: dict[str, Any]
    # What the camera said about its known officer otherwise than the registry, field -> (registered,
    # reported); the caller flags it (`policies.dock.officer_mismatch`).
    officer_disagreement: dict[str, tuple[str, str]]


def register_camera(
    db: Session,
    audit: AuditLog,
    *,
    identity: CameraIdentity,
    usb_serial: str | None,
    driver: str,
    port: str,
    now: datetime,
) -> Registration:
    """Create or update the camera, its unit and its assigned officer from the identity it reported.
    A camera that describes a known officer otherwise than the registry changes nothing about the
    officer; the disagreement is returned."""
    unit = _unit(db, identity.unit_no, identity.unit_name)
    officer, disagreement = _officer(db, identity.officer_no, identity.officer_name, unit)
    camera = db.scalar(select(Camera).where(Camera.device_serial == identity.device_serial))
    changed: dict[str, Any] = {}
    if camera is None:
        camera = Camera(device_serial=identity.device_serial, driver=driver, first_seen_at=now)
        db.add(camera)
        changed["new"] = True
    previous_officer = camera.assigned_officer.officer_no if camera.assigned_officer else None
    if previous_officer != (officer.officer_no if officer else None):
        changed["assigned_officer"] = [previous_officer, officer.officer_no if officer else None]
    camera.unit = unit
    camera.assigned_officer = officer
    camera.driver = driver
    camera.usb_serial = usb_serial
    camera.last_docked_at = now
    db.flush()
    if changed:
        audit.append(
            db,
            actor=daemon_actor(port),
            action="camera.register",
            subject=f"camera:{identity.device_serial}",
            details={**changed, "source": identity.source},
            at=now,
        )
    return Registration(
        camera=camera, officer=officer, identity_changed=changed, officer_disagreement=disagreement
    )


def record_clock(
    db: Session,
    *,
    camera: Camera,
    dock_session: DockVisit,
    reading: ClockSync,
    now: datetime,
) -> None:
    """Store the offset measured before correction: the drift history and the session's own copy."""
    db.add(
        ClockReading(
            camera_id=camera.id,
            dock_session_id=dock_session.id,
            measured_at=now,
            offset_s=reading.offset_s,
            round_trip_s=reading.round_trip_s,
            residual_s=reading.residual_s,
            state=reading.state.value,
        )
    )
    camera.last_clock_offset_s = reading.offset_s
    camera.clock_state = reading.state.value
    dock_session.clock_offset_s = reading.offset_s
    dock_session.clock_round_trip_s = reading.round_trip_s
    dock_session.clock_state = reading.state.value


def custody_event(
    db: Session,
    audit: AuditLog,
    *,
    camera: Camera,
    kind: CustodyKind,
    officer: Officer | None,
    actor: Actor,
    now: datetime,
    dock_session: DockVisit | None = None,
    note: str | None = None,
) -> CustodyEvent:
    """Check a camera in or out; the holder changes and the audit event commit together."""
    event = CustodyEvent(
        camera_id=camera.id,
        officer_id=officer.id if officer else None,
        kind=kind,
        at=now,
        actor=actor.user,
        actor_role=str(actor.role),
        dock_session_id=dock_session.id if dock_session else None,
        note=note,
    )
    db.add(event)
    if kind is CustodyKind.CHECK_IN:
        camera.holder = None
        camera.checked_out_at = None
    else:
        camera.holder = officer
        camera.checked_out_at = now
    db.flush()
    audit.append(
        db,
        actor=actor,
        action=f"custody.{kind.value}",
        subject=f"camera:{camera.device_serial}",
        details={
            "officer": officer.officer_no if officer else None,
            "note": note,
            "dock_session": dock_session.id if dock_session else None,
        },
        at=now,
    )
    return event
