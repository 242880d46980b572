"""Control commands for approvals, exports, spot checks and reports.

Each handler validates its JSON arguments (a wrong type or a missing one is a UsageError naming the
argument), does its work in one catalog transaction with its own domain audit event, and returns plain
JSON (`view` also hands over the open recording). Roles: only an approver approves; approvers and admins
revoke; admins, clerks and approvers export and copy, and auditors may also view (an approval is needed
anyway); admins and auditors run spot checks; oversight roles read reports.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ingestd.control.protocol import PassedFile
from ingestd.control.registry import OVERSIGHT, Request, command
from ingestd.evidence.approvals import (
    approval_dict,
    create_approval,
    revoke_approval,
    uncovered_confidential,
    validate_new_approval,
)
from ingestd.evidence.copies import CopyOutcome, copy_footage
from ingestd.evidence.delivery import DeliveryRequest
from ingestd.evidence.errors import EvidenceUsageError
from ingestd.evidence.export import ExportOutcome, export_bag
from ingestd.evidence.periods import parse_period
from ingestd.evidence.report import GroupBy, build_report
from ingestd.evidence.spotcheck import (
    create_inspection,
    inspection_dict,
    list_inspections,
    record_verdict,
    resolve_unit,
)
from ingestd.evidence.viewing import open_for_viewing
from ingestd.services import Services
from store.audit import Role
from store.models import Approval, Inspection, InspectionVerdict

APPROVERS = frozenset({Role.APPROVER})
REVOKERS = frozenset({Role.APPROVER, Role.ADMIN})
EXPORTERS = frozenset({Role.ADMIN, Role.CLERK, Role.APPROVER})
FOOTAGE_VIEWERS = EXPORTERS | {Role.AUDITOR}  # an auditor may watch what was recorded, not take it away
INSPECTORS = frozenset({Role.ADMIN, Role.AUDITOR})
_DURATION = re.compile(r"^(\d{1,5})([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


# --- argument checking ---------------------------------------------------------------------------------


def _arg(args: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = False) -> Any:
    value = args.get(name)
    if value is None:
        if required:
            raise EvidenceUsageError(detail=f"missing argument {name!r}")
        return None
    if isinstance(value, bool) and kind is int:
        raise EvidenceUsageError(detail=f"argument {name!r} must be an integer")
    if not isinstance(value, kind):
        raise EvidenceUsageError(detail=f"argument {name!r} has the wrong type ({type(value).__name__})")
    return value


def _int(args: Mapping[str, Any], name: str, *, required: bool = False) -> int | None:
    value = _arg(args, name, int, required=required)
    return int(value) if value is not None else None


def _req_int(args: Mapping[str, Any], name: str) -> int:
    value = _int(args, name, required=True)
    assert value is not None  # noqa: S101 - required=True raised otherwise
    return value


def _str(args: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    value = _arg(args, name, str, required=required)
    return str(value) if value is not None else None


def _bool(args: Mapping[str, Any], name: str) -> bool:
    return bool(_arg(args, name, bool) or False)


def _int_list(args: Mapping[str, Any], name: str) -> list[int]:
    value = _arg(args, name, list) or []
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise EvidenceUsageError(detail=f"argument {name!r} must be a list of integers")
    return [int(v) for v in value]


def parse_expiry(args: Mapping[str, Any], now: datetime) -> datetime:
    """`expires_at` (ISO 8601 with a zone) or `expires_in` (e.g. 90m, 12h, 30d), relative to `now`."""
    at = _str(args, "expires_at")
    within = _str(args, "expires_in")
    if (at is None) == (within is None):
        raise EvidenceUsageError(
            detail="give exactly one of --expires-at (ISO time with zone) or --expires-in"
        )
    if within is not None:
        match = _DURATION.match(within.strip())
        if not match:
            raise EvidenceUsageError(detail=f"--expires-in {within!r} is not like 90m, 12h or 30d")
        return now + timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    assert at is not None  # noqa: S101 - one of the two is set
    try:
        parsed = datetime.fromisoformat(at)
    except ValueError:
        raise EvidenceUsageError(detail=f"--expires-at {at!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise EvidenceUsageError(detail=f"--expires-at {at!r} has no zone; add one, e.g. +08:00 or Z")
    return parsed.astimezone(UTC)


# --- approvals -----------------------------------------------------------------------------------------


@command("approve", roles=APPROVERS, mutates=True)
def approve(services: Services, request: Request) -> dict[str, Any]:
    args = request.args
    new = validate_new_approval(
        grantee=_str(args, "grantee", required=True) or "",
        purpose=_str(args, "purpose", required=True) or "",
        expires_at=parse_expiry(args, request.now),
        recording_ids=_int_list(args, "recording_ids"),
        case_id=_str(args, "case_id"),
        allows_confidential=_bool(args, "allows_confidential"),
        requested_by=_str(args, "requested_by"),
        now=request.now,
    )
    with services.catalog.transaction() as db:
        approval = create_approval(db, services.audit, request.actor, new, now=request.now)
        return {
            **approval_dict(approval, request.now),
            "confidential_not_covered": uncovered_confidential(db, approval),
        }


@command("revoke", roles=REVOKERS, mutates=True)
def revoke(services: Services, request: Request) -> dict[str, Any]:
    approval_id = _req_int(request.args, "approval_id")
    reason = (_str(request.args, "reason") or "").strip()
    if not reason:
        raise EvidenceUsageError(detail="revoking needs a reason (--reason)")
    with services.catalog.transaction() as db:
        approval = revoke_approval(
            db, services.audit, request.actor, approval_id, reason=reason, now=request.now
        )
        return approval_dict(approval, request.now)


@command("approvals", roles=OVERSIGHT | EXPORTERS)
def approvals(services: Services, request: Request) -> dict[str, Any]:
    approval_id = _int(request.args, "approval_id")
    with services.catalog.transaction() as db:
        query = select(Approval).order_by(Approval.id.desc()).limit(_int(request.args, "limit") or 100)
        if approval_id is not None:
            query = select(Approval).where(Approval.id == approval_id)
        rows = [approval_dict(a, request.now) for a in db.scalars(query)]
    if approval_id is not None and not rows:
        raise EvidenceUsageError(detail=f"no approval with id {approval_id}")
    return {"approvals": rows}


# --- footage: export, copy, view ---------------------------------------------------------------------


def _deliver(
    services: Services, request: Request, delivers: Callable[[DeliveryRequest], ExportOutcome | CopyOutcome]
) -> dict[str, Any]:
    """Export or copy: the same arguments, the same request, and the caller's new directory passed open
    with it (the daemon never opens a path the caller chose: see `ingestd.evidence.delivery`)."""
    if len(request.passed_fds) != 1:
        raise EvidenceUsageError(
            detail=f"{request.command} needs the new destination directory handed over open "
            f"(got {len(request.passed_fds)} descriptors): use ingestctl {request.command}"
        )
    dest = Path(_str(request.args, "dest", required=True) or "")
    if not dest.is_absolute():
        raise EvidenceUsageError(detail=f"destination {dest} must be an absolute path")
    asked = DeliveryRequest(
        services,
        request.actor,
        _req_int(request.args, "approval_id"),
        dest,
        request.passed_fds[0],
        request.now,
        tuple(_int_list(request.args, "recording_ids")),
    )
    return delivers(asked).as_dict()


@command("export", roles=EXPORTERS, mutates=True, footage=True)
def export(services: Services, request: Request) -> dict[str, Any]:
    return _deliver(services, request, export_bag)


@command("copy", roles=EXPORTERS, mutates=True, footage=True)
def copy(services: Services, request: Request) -> dict[str, Any]:
    return _deliver(services, request, copy_footage)


@command("view", roles=FOOTAGE_VIEWERS, footage=True)
def view(services: Services, request: Request) -> PassedFile:
    """The recording's facts, and the stored object itself, opened read-only, handed to the caller."""
    viewing = open_for_viewing(
        services,
        request.actor,
        _req_int(request.args, "approval_id"),
        _req_int(request.args, "recording_id"),
        now=request.now,
        later=request.later,
    )
    return PassedFile(viewing.as_dict(), viewing.file)


# --- spot checks ---------------------------------------------------------------------------------------


def _period(services: Services, args: Mapping[str, Any]) -> Any:
    return parse_period(
        month=_str(args, "month"),
        start=_str(args, "from"),
        end=_str(args, "to"),
        zone=services.config.deadlines.timezone,
    )


@command("spotcheck.sample", roles=INSPECTORS, mutates=True)
def spotcheck_sample(services: Services, request: Request) -> dict[str, Any]:
    args = request.args
    period = _period(services, args)
    with services.catalog.transaction() as db:
        inspection = create_inspection(
            db,
            services.audit,
            request.actor,
            unit_no=_str(args, "unit_no"),
            period=period,
            size=_int(args, "size") or 10,
            seed=_str(args, "seed"),
            note=_str(args, "note"),
            now=request.now,
        )
        return inspection_dict(db, inspection)


@command("spotcheck.verdict", roles=INSPECTORS, mutates=True)
def spotcheck_verdict(services: Services, request: Request) -> dict[str, Any]:
    args = request.args
    verdict_text = _str(args, "verdict", required=True) or ""
    try:
        verdict = InspectionVerdict(verdict_text)
    except ValueError:
        raise EvidenceUsageError(detail=f"verdict must be pass or fail, got {verdict_text!r}") from None
    inspection_id = _req_int(args, "inspection_id")
    with services.catalog.transaction() as db:
        record_verdict(
            db,
            services.audit,
            request.actor,
            inspection_id=inspection_id,
            recording_id=_req_int(args, "recording_id"),
            verdict=verdict,
            notes=_str(args, "notes"),
            amend=_bool(args, "amend"),
            now=request.now,
        )
        inspection = db.get(Inspection, inspection_id)
        assert inspection is not None  # noqa: S101 - record_verdict checked it
        return inspection_dict(db, inspection)


@command("spotcheck.show", roles=OVERSIGHT)
def spotcheck_show(services: Services, request: Request) -> dict[str, Any]:
    inspection_id = _int(request.args, "inspection_id")
    with services.catalog.transaction() as db:
        if inspection_id is None:
            return {"inspections": list_inspections(db, _int(request.args, "limit") or 50)}
        inspection = db.get(Inspection, inspection_id)
        if inspection is None:
            raise EvidenceUsageError(detail=f"no inspection with id {inspection_id}")
        return inspection_dict(db, inspection, replay=True)


# --- reports -------------------------------------------------------------------------------------------


@command("report", roles=OVERSIGHT)
def report(services: Services, request: Request) -> dict[str, Any]:
    args = request.args
    period = _period(services, args)
    by = _str(args, "by") or "both"
    choices = {
        "unit": (GroupBy.UNIT,),
        "officer": (GroupBy.OFFICER,),
        "both": (GroupBy.UNIT, GroupBy.OFFICER),
    }
    if by not in choices:
        raise EvidenceUsageError(detail=f"--by must be unit, officer or both, got {by!r}")
    with services.catalog.transaction() as db:
        unit = resolve_unit(db, _str(args, "unit_no"))
        return build_report(db, period, groups=choices[by], unit_id=unit.id if unit else None)
