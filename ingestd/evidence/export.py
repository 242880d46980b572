"""Exporting approved footage as a signed BagIt bag (001 art. 26; 003 art. 13; 004 art. 19, 20).

Guarantees:
- Nothing is copied unless the approval is valid for every recording at the time of the request; a
  refusal is audited (outcome "refused", with its code) in a transaction of its own.
- The bag is built in `DEST.partial`, proven with the offline verifier, recorded (an `Export` row and its
  audit event, committed) and only then renamed to DEST: a DEST that exists is complete, verified and
  recorded. A failure removes the partial bag and is audited (outcome "failed").
- No catalog transaction is held while bytes are copied, so ingest is never blocked by an export.
- An existing DEST or DEST.partial is never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ingestd.evidence.approvals import FootageAction, audit_refusal, check_approval, scope_recordings
from ingestd.evidence.bag import PayloadItem, write_bag
from ingestd.evidence.errors import ApprovalRefused, EvidenceUsageError, ExportError, ExportIntegrityError
from ingestd.evidence.naming import payload_name
from ingestd.evidence.verify_bag import verify_bag
from ingestd.policies.flags import iso
from ingestd.services import Services
from store.audit import Actor
from store.models import Approval, Export, Recording, Unit

PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class ExportOutcome:
    export_id: int
    destination: str
    approval_id: int
    recording_ids: tuple[int, ...]
    payload_bytes: int
    tag_manifest_sha256: str
    tag_manifest_blake3: str
    key_id: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "export_id": self.export_id,
            "destination": self.destination,
            "approval_id": self.approval_id,
            "recording_ids": list(self.recording_ids),
            "payload_bytes": self.payload_bytes,
            "tag_manifest_sha256": self.tag_manifest_sha256,
            "tag_manifest_blake3": self.tag_manifest_blake3,
            "key_id": self.key_id,
        }


@dataclass(frozen=True)
class _Plan:
    approval_id: int
    items: tuple[PayloadItem, ...]
    bag_info: tuple[tuple[str, str], ...]
    recording_ids: tuple[int, ...]


def check_destination(dest: Path, actor: Actor) -> Path:
    """The partial path to build in. DEST must be absolute (the daemon's working directory is not the
    caller's), new, and in a directory the caller owns: the daemon must not become a way to write
    into places the caller could not write to."""
    if not dest.is_absolute():
        raise EvidenceUsageError(detail=f"destination {dest} must be an absolute path")
    if not dest.name or dest.name in (".", ".."):
        raise EvidenceUsageError(detail=f"destination {dest} must name a new directory")
    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    if dest.exists() or dest.is_symlink():
        raise ExportError(dest=dest, detail="already exists; an export never overwrites anything")
    if partial.exists() or partial.is_symlink():
        raise ExportError(dest=dest, detail=f"{partial} exists (an interrupted export?); remove it first")
    parent = dest.parent
    try:
        info = parent.stat()
    except OSError as error:
        raise ExportError(dest=dest, detail=f"parent directory: {error.strerror or error}") from error
    if not parent.is_dir():
        raise ExportError(dest=dest, detail=f"{parent} is not a directory")
    if actor.uid is not None and actor.uid not in (0, info.st_uid):
        raise ExportError(dest=dest, detail=f"{parent} is not owned by the caller (uid {actor.uid})")
    return partial


def _select(
    session: Session, approval: Approval | None, recording_ids: Sequence[int] | None
) -> list[Recording]:
    if recording_ids:
        wanted = sorted(set(recording_ids))
        rows = list(session.scalars(select(Recording).where(Recording.id.in_(wanted)).order_by(Recording.id)))
        unknown = sorted(set(wanted) - {r.id for r in rows})
        if unknown:
            raise EvidenceUsageError(detail=f"no recording with id {', '.join(map(str, unknown))}")
        return rows
    return scope_recordings(session, approval) if approval is not None else []


def _plan(session: Session, approval: Approval, rows: list[Recording], actor: Actor, now: datetime) -> _Plan:
    unit_ids = {r.unit_id for r in rows if r.unit_id is not None}
    units = {u.id: u for u in session.scalars(select(Unit).where(Unit.id.in_(unit_ids)))}
    items = []
    officers: dict[str, str] = {}
    for row in rows:
        officer = row.officer
        unit = units.get(row.unit_id) if row.unit_id is not None else None
        name = payload_name(
            recording_id=row.id,
            officer_name=officer.name if officer else None,
            officer_no=officer.officer_no if officer else None,
            case=row.case_id or row.case_name,
            recorded_at=row.recorded_at,
            original_path=row.original_path,
        )
        if officer is not None:
            officers[officer.officer_no] = f"{officer.name} ({officer.officer_no})" + (
                f", {unit.name} ({unit.unit_no})" if unit else ""
            )
        facts = {
            "device_serial": row.camera.device_serial,
            "officer_no": officer.officer_no if officer else None,
            "officer_name": officer.name if officer else None,
            "unit_no": unit.unit_no if unit else None,
            "unit_name": unit.name if unit else None,
            "original_path": row.original_path,
            "recorded_at": iso(row.recorded_at),
            "recorded_at_camera": iso(row.recorded_at_raw),
            "recorded_at_source": row.recorded_at_source,
            "clock_offset_s": row.clock_offset_s,
            "duration_s": row.duration_s,
            "ingested_at": iso(row.ingested_at),
            "case_id": row.case_id,
            "case_name": row.case_name,
            "case_party": row.case_party,
            "event": row.event,
            "place": row.place,
            "confidentiality": row.confidentiality.value,
        }
        items.append(
            PayloadItem(
                name=name,
                recording_id=row.id,
                blake3=row.blake3,
                sha256=row.sha256,
                size=row.size,
                facts=facts,
            )
        )

    def distinct(values: Sequence[str | None]) -> list[str]:
        return sorted({v for v in values if v})

    times = sorted(r.recorded_at for r in rows)
    devices = ", ".join(distinct([r.camera.device_serial for r in rows]))
    info: list[tuple[str, str]] = [
        ("Source-Organization", "; ".join(distinct([u.name for u in units.values()])) or "unknown"),
        ("External-Identifier", f"approval-{approval.id}"),
        ("Event", "; ".join(distinct([r.event for r in rows])) or "not recorded"),
        ("Event-Time", f"{iso(times[0])} / {iso(times[-1])}"),
        ("Place", "; ".join(distinct([r.place for r in rows])) or "not recorded"),
        ("Recording-Method", "body-worn camera; devices " + devices),
        *[("Officer", text) for _, text in sorted(officers.items())],
        *[("Case-Id", case) for case in distinct([r.case_id for r in rows])],
        ("Made-By", f"{actor.user} (uid {actor.uid}, role {actor.role.value})"),
        ("Extracted-By", approval.requested_by or actor.user),
        ("Extraction-Date", iso(now)),
        ("Approval-Id", str(approval.id)),
        ("Approval-Purpose", approval.purpose),
        ("Approved-By", approval.approver),
        ("Approval-Expires", iso(approval.expires_at)),
        (
            "Internal-Sender-Description",
            "Body-worn camera footage from the evidence store; recordings.json holds each file's facts.",
        ),
    ]
    return _Plan(approval.id, tuple(items), tuple(info), tuple(r.id for r in rows))


def _give_to(path: Path, uid: int | None) -> None:
    # The daemon may run as root; the bag belongs to whoever asked for it, so they can hand it over.
    if uid is None or os.geteuid() != 0:
        return
    for directory, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            os.chown(Path(directory) / name, uid, -1, follow_symlinks=False)
    os.chown(path, uid, -1, follow_symlinks=False)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _build_and_record(
    services: Services,
    actor: Actor,
    plan: _Plan,
    *,
    dest: Path,
    partial: Path,
    now: datetime,
    request_details: dict[str, Any],
) -> ExportOutcome:
    catalog, audit, signer = services.catalog, services.audit, services.audit.signer
    try:
        partial.mkdir(mode=0o750)
    except OSError as error:
        raise ExportError(dest=dest, detail=f"cannot create {partial}: {error.strerror or error}") from error
    result = write_bag(partial, plan.items, plan.bag_info, signer, services.store.open, now=now)
    report = verify_bag(partial, public_key=signer.public_key)
    if not report.clean:
        found = "; ".join(f"{p.kind} {p.subject}: {p.detail}" for p in report.problems[:10])
        raise ExportIntegrityError(
            blake3="-", recording="-", detail=f"the written bag does not verify: {found}"
        )
    _give_to(partial, actor.uid)
    with catalog.transaction() as session:
        # Revoked while the bag was being written? Then it is not handed over.
        approval = session.get(Approval, plan.approval_id, with_for_update=True)
        rows = list(session.scalars(select(Recording).where(Recording.id.in_(plan.recording_ids))))
        check_approval(approval, rows, now, FootageAction.EXPORT, approval_id=plan.approval_id)
        export = Export(
            approval_id=plan.approval_id,
            destination=str(dest),
            created_at=now,
            created_by=actor.user,
            recording_count=len(plan.items),
            tag_manifest_blake3=result.tag_manifest_blake3,
        )
        session.add(export)
        session.flush()
        details = {
            **request_details,
            "recordings": list(plan.recording_ids),
            "files": [i.name for i in plan.items],
            "payload_bytes": result.payload_bytes,
            "tag_manifest_sha256": result.tag_manifest_sha256,
            "tag_manifest_blake3": result.tag_manifest_blake3,
            "key_id": result.key_id,
        }
        audit.append(
            session, actor=actor, action="export", subject=f"export:{export.id}", details=details, at=now
        )
        export_id = export.id
    if dest.exists() or dest.is_symlink():
        raise ExportError(dest=dest, detail="appeared while the export was being written")
    try:
        partial.rename(dest)
        _fsync_dir(dest.parent)
    except OSError as error:
        raise ExportError(dest=dest, detail=f"rename failed: {error.strerror or error}") from error
    return ExportOutcome(
        export_id=export_id,
        destination=str(dest),
        approval_id=plan.approval_id,
        recording_ids=plan.recording_ids,
        payload_bytes=result.payload_bytes,
        tag_manifest_sha256=result.tag_manifest_sha256,
        tag_manifest_blake3=result.tag_manifest_blake3,
        key_id=result.key_id,
    )


def _load_plan(
    services: Services,
    actor: Actor,
    approval_id: int,
    *,
    recording_ids: Sequence[int] | None,
    now: datetime,
    request_details: dict[str, Any],
) -> _Plan:
    with services.catalog.transaction() as session:
        approval = session.get(Approval, approval_id)
        rows = _select(session, approval, recording_ids)
        check_approval(approval, rows, now, FootageAction.EXPORT, approval_id=approval_id)
        if approval is None or not rows:
            raise EvidenceUsageError(detail=f"approval {approval_id} covers no recordings to export")
        plan = _plan(session, approval, rows, actor, now)
        services.audit.append(
            session,
            actor=actor,
            action="export.begin",
            subject=f"approval:{approval_id}",
            details={**request_details, "recordings": list(plan.recording_ids)},
            at=now,
        )
    return plan


def export_bag(
    services: Services,
    actor: Actor,
    approval_id: int,
    dest: Path,
    *,
    now: datetime,
    recording_ids: Sequence[int] | None = None,
) -> ExportOutcome:
    """Export the recordings `approval_id` covers (or the listed subset of them) as a bag at `dest`."""
    request_details: dict[str, Any] = {
        "approval": approval_id,
        "destination": str(dest),
        "requested_recordings": sorted(set(recording_ids or [])),
    }
    partial = check_destination(dest, actor)
    try:
        plan = _load_plan(
            services,
            actor,
            approval_id,
            recording_ids=recording_ids,
            now=now,
            request_details=request_details,
        )
    except ApprovalRefused as refused:
        audit_refusal(
            services.catalog,
            services.audit,
            actor,
            refused,
            action=FootageAction.EXPORT,
            details=request_details,
            now=now,
        )
        raise
    try:
        return _build_and_record(
            services, actor, plan, dest=dest, partial=partial, now=now, request_details=request_details
        )
    except BaseException as error:
        with contextlib.suppress(OSError):
            shutil.rmtree(partial)
        outcome = "refused" if isinstance(error, ApprovalRefused) else "failed"
        with services.catalog.transaction() as session:
            services.audit.append(
                session,
                actor=actor,
                action="export",
                subject=f"approval:{approval_id}",
                outcome=outcome,
                at=now,
                details={**request_details, "error": str(error) or type(error).__name__},
            )
        raise
