"""Exporting approved footage as a signed BagIt bag (001 art. 26; 003 art. 13; 004 art. 19, 20).

Guarantees (besides those of every delivery, see `ingestd.evidence.delivery`):
- The bag is proven with the offline verifier (against the station key) and recorded (an `Export` row
  and its audit event, committed) before it is handed to the caller: a bag the caller gets is complete,
  verified and recorded.
- No catalog transaction is held while bytes are copied, so ingest is never blocked by an export.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from ingestd.evidence.approvals import FootageAction
from ingestd.evidence.bag import PayloadItem, write_bag
from ingestd.evidence.delivery import (
    Delivery,
    DeliveryRequest,
    Workspace,
    deliver,
    give_to,
    payload_items,
    units_of,
)
from ingestd.evidence.errors import ExportIntegrityError
from ingestd.evidence.verify_bag import verify_tree
from ingestd.stream_back import open_object
from store.audit import Actor
from store.models import Approval, Export, Recording
from store.times import iso

EXPORT = Delivery(FootageAction.EXPORT, audit_action="export")


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


def _plan(db: Session, approval: Approval, rows: list[Recording], actor: Actor, now: datetime) -> _Plan:
    units = units_of(db, rows)
    officers: dict[str, str] = {}
    for row in rows:
        officer = row.officer
        if officer is not None:
            unit = units.get(row.unit_id) if row.unit_id is not None else None
            officers[officer.officer_no] = f"{officer.name} ({officer.officer_no})" + (
                f", {unit.name} ({unit.unit_no})" if unit else ""
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
    return _Plan(approval.id, payload_items(db, rows), tuple(info), tuple(r.id for r in rows))


def _load_plan(request: DeliveryRequest) -> _Plan:
    with request.services.catalog.transaction() as db:
        approval, rows = request.approved_recordings(db, FootageAction.EXPORT)
        plan = _plan(db, approval, rows, request.actor, request.now)
        request.services.audit.append(
            db,
            actor=request.actor,
            action="export.begin",
            subject=f"approval:{request.approval_id}",
            details={**request.details, "recordings": list(plan.recording_ids)},
            at=request.now,
        )
    return plan


def _build_and_record(request: DeliveryRequest, plan: _Plan, workspace: Workspace) -> ExportOutcome:
    services, actor, now = request.services, request.actor, request.now
    signer = services.audit.signer
    with services.in_use.reading(item.blake3 for item in plan.items):
        opener = functools.partial(open_object, services)  # an evicted recording streams from the vault
        result = write_bag(workspace.fd, plan.items, plan.bag_info, signer, opener, now=now)
    # Read back through the descriptor: nobody but the daemon can change the tree until it is handed over.
    report = verify_tree(workspace.path, trusted_keys=[signer.public_key])
    if not report.valid:
        found = "; ".join(f"{p.kind} {p.subject}: {p.detail}" for p in report.problems[:10])
        raise ExportIntegrityError(
            blake3="-", recording="-", detail=f"the written bag does not verify: {found}"
        )
    with services.catalog.transaction() as db:
        request.recheck_approval(db, plan.recording_ids, FootageAction.EXPORT)
        export = Export(
            approval_id=plan.approval_id,
            destination=str(request.dest),
            created_at=now,
            created_by=actor.user,
            recording_count=len(plan.items),
            tag_manifest_blake3=result.tag_manifest_blake3,
        )
        db.add(export)
        db.flush()
        details = {
            **request.details,
            "recordings": list(plan.recording_ids),
            "files": [i.name for i in plan.items],
            "payload_bytes": result.payload_bytes,
            "tag_manifest_sha256": result.tag_manifest_sha256,
            "tag_manifest_blake3": result.tag_manifest_blake3,
            "key_id": result.key_id,
        }
        services.audit.append(
            db, actor=actor, action="export", subject=f"export:{export.id}", details=details, at=now
        )
        export_id = export.id
    give_to(workspace)  # only now: re-checked and recorded
    return ExportOutcome(
        export_id=export_id,
        destination=str(request.dest),
        approval_id=plan.approval_id,
        recording_ids=plan.recording_ids,
        payload_bytes=result.payload_bytes,
        tag_manifest_sha256=result.tag_manifest_sha256,
        tag_manifest_blake3=result.tag_manifest_blake3,
        key_id=result.key_id,
    )


def export_bag(request: DeliveryRequest) -> ExportOutcome:
    """Export the recordings the approval covers (or the listed subset of them) as a bag at DEST."""
    return deliver(request, EXPORT, _load_plan, _build_and_record)
