"""Spot checks and the inspection ledger (000 art. 18; 002 art. 22).

Guarantees: a sample is a pure function of the seed and the set of recordings in the period and unit:
each recording is ranked by BLAKE3(seed ‖ ":" ‖ id) and the lowest ranks are taken. So the same seed,
period and unit draw the same sample, independently of row order or backend, and a recording ingested
late into the period changes the sample only if it ranks inside it. The seed is stored with the
inspection; a verdict is written once per item (changing it needs `amend`, and the audit event keeps the
previous verdict).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import blake3
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ingestd.evidence.errors import EvidenceUsageError
from ingestd.evidence.periods import Period
from store.audit import Actor, AuditLog
from store.models import Inspection, InspectionItem, InspectionVerdict, Recording, Unit
from store.times import iso

MAX_SAMPLE = 1000
SEED_MAX = 64
NOTES_MAX = 4000


def sample_ids(ids: Iterable[int], seed: str, size: int) -> list[int]:
    """The `size` ids of lowest rank BLAKE3(seed:id); ties cannot happen for distinct ids."""
    return sorted(set(ids), key=lambda i: blake3.blake3(f"{seed}:{i}".encode()).digest())[:size]


def _population(session: Session, unit_id: int | None, period: Period) -> list[int]:
    query = select(Recording.id).where(
        Recording.recorded_at >= period.start, Recording.recorded_at < period.end
    )
    if unit_id is not None:
        query = query.where(Recording.unit_id == unit_id)
    return list(session.scalars(query))


def resolve_unit(session: Session, unit_no: str | None) -> Unit | None:
    if unit_no is None:
        return None
    unit = session.scalar(select(Unit).where(Unit.unit_no == unit_no))
    if unit is None:
        raise EvidenceUsageError(detail=f"no unit with number {unit_no!r}")
    return unit


def create_inspection(
    session: Session,
    audit: AuditLog,
    actor: Actor,
    *,
    unit_no: str | None,
    period: Period,
    size: int,
    seed: str | None,
    note: str | None,
    now: datetime,
) -> Inspection:
    """Draw a sample and open its ledger, with the audit event, in the caller's transaction."""
    if not 1 <= size <= MAX_SAMPLE:
        raise EvidenceUsageError(detail=f"sample size must be 1..{MAX_SAMPLE}, got {size}")
    if seed is not None and not (0 < len(seed) <= SEED_MAX and seed.isprintable()):
        raise EvidenceUsageError(detail=f"seed must be 1..{SEED_MAX} printable characters")
    seed = seed or secrets.token_hex(16)
    unit = resolve_unit(session, unit_no)
    population = _population(session, unit.id if unit else None, period)
    if not population:
        where = f" for unit {unit_no}" if unit else ""
        raise EvidenceUsageError(detail=f"no recordings in {period.label}{where}")
    chosen = sample_ids(population, seed, size)
    inspection = Inspection(
        created_at=now,
        created_by=actor.user,
        unit_id=unit.id if unit else None,
        period_start=period.start,
        period_end=period.end,
        seed=seed,
        sample_size=len(chosen),
        population=len(population),
        note=note,
    )
    session.add(inspection)
    session.flush()
    session.add_all(
        InspectionItem(inspection_id=inspection.id, recording_id=rid, position=n)
        for n, rid in enumerate(chosen, 1)
    )
    session.flush()
    audit.append(
        session,
        actor=actor,
        action="spotcheck.sample",
        subject=f"inspection:{inspection.id}",
        details={
            "unit": unit_no,
            "period": period.as_dict(),
            "seed": seed,
            "size": size,
            "population": len(population),
            "recordings": chosen,
        },
        at=now,
    )
    return inspection


def record_verdict(
    session: Session,
    audit: AuditLog,
    actor: Actor,
    *,
    inspection_id: int,
    recording_id: int,
    verdict: InspectionVerdict,
    notes: str | None,
    amend: bool,
    now: datetime,
) -> InspectionItem:
    if notes is not None and len(notes) > NOTES_MAX:
        raise EvidenceUsageError(detail=f"notes are {len(notes)} characters, at most {NOTES_MAX}")
    if session.get(Inspection, inspection_id) is None:
        raise EvidenceUsageError(detail=f"no inspection with id {inspection_id}")
    item = session.scalar(
        select(InspectionItem)
        .where(InspectionItem.inspection_id == inspection_id, InspectionItem.recording_id == recording_id)
        .with_for_update()
    )
    if item is None:
        raise EvidenceUsageError(
            detail=f"recording {recording_id} is not in the sample of inspection {inspection_id}"
        )
    previous = item.verdict
    if previous is not None and not amend:
        raise EvidenceUsageError(
            detail=f"recording {recording_id} already has verdict {previous.value} "
            f"by {item.reviewed_by}; pass --amend to change it"
        )
    item.verdict = verdict
    item.notes = notes
    item.reviewed_by = actor.user
    item.reviewed_at = now
    session.flush()
    audit.append(
        session,
        actor=actor,
        action="spotcheck.verdict",
        subject=f"inspection:{inspection_id}",
        details={
            "recording": recording_id,
            "verdict": verdict.value,
            "notes": notes,
            "previous": previous.value if previous else None,
        },
        at=now,
    )
    return item


def inspection_dict(session: Session, inspection: Inspection, *, replay: bool = False) -> dict[str, Any]:
    """The ledger of one inspection; with `replay`, whether its sample draws again the same."""
    unit = session.get(Unit, inspection.unit_id) if inspection.unit_id is not None else None
    items = list(
        session.scalars(
            select(InspectionItem)
            .where(InspectionItem.inspection_id == inspection.id)
            .order_by(InspectionItem.position)
        )
    )
    verdicts = {v.value: 0 for v in InspectionVerdict} | {"pending": 0}
    for item in items:
        verdicts[item.verdict.value if item.verdict else "pending"] += 1
    out: dict[str, Any] = {
        "id": inspection.id,
        "created_at": iso(inspection.created_at),
        "created_by": inspection.created_by,
        "unit_no": unit.unit_no if unit else None,
        "period": {"start": iso(inspection.period_start), "end": iso(inspection.period_end)},
        "seed": inspection.seed,
        "sample_size": inspection.sample_size,
        "population": inspection.population,
        "note": inspection.note,
        "summary": verdicts,
        "items": [
            {
                "position": i.position,
                "recording_id": i.recording_id,
                "verdict": i.verdict.value if i.verdict else None,
                "notes": i.notes,
                "reviewed_by": i.reviewed_by,
                "reviewed_at": iso(i.reviewed_at) if i.reviewed_at else None,
            }
            for i in items
        ],
    }
    if replay:
        period = Period(inspection.period_start, inspection.period_end, "")
        redrawn = sample_ids(
            _population(session, inspection.unit_id, period), inspection.seed, inspection.sample_size
        )
        out["reproduces"] = redrawn == [i.recording_id for i in items]
    return out


def list_inspections(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Inspection, Unit.unit_no, func.count(InspectionItem.id), func.count(InspectionItem.verdict))
        .outerjoin(Unit, Unit.id == Inspection.unit_id)
        .outerjoin(InspectionItem, InspectionItem.inspection_id == Inspection.id)
        .group_by(Inspection.id, Unit.unit_no)
        .order_by(Inspection.id.desc())
        .limit(limit)
    ).all()
    return [
        {
            "id": ins.id,
            "created_at": iso(ins.created_at),
            "created_by": ins.created_by,
            "unit_no": unit_no,
            "period": {"start": iso(ins.period_start), "end": iso(ins.period_end)},
            "seed": ins.seed,
            "sample_size": ins.sample_size,
            "reviewed": reviewed,
            "pending": total - reviewed,
        }
        for ins, unit_no, total, reviewed in rows
    ]
