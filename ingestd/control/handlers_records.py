"""Control commands for custody, flags, classification, holds, deadline extensions and the purge.

Each mutation runs in one catalog transaction as the caller's real OS identity and writes its own domain
event besides the dispatcher's `ctl.<name>`. Roles: clerks and admins hand cameras over, explain flags
and classify footage; a hold may also be placed by an approver, but only an approver or an admin lifts
one, extends a deadline or lowers a recording's protection in `tag` (all weaken protection); only an
admin purges. Every role reads the custody register and the flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from ingestd import operations, purge
from ingestd.control.queries import Args, iso
from ingestd.control.registry import EVERYONE, Request, command
from ingestd.services import Services
from store.audit import Role
from store.models import Camera, Confidentiality, RetentionClass

CUSTODIANS = frozenset({Role.ADMIN, Role.CLERK})
HOLDERS = frozenset({Role.ADMIN, Role.CLERK, Role.APPROVER})
RELEASERS = operations.PROTECTION_LOWERERS
PURGERS = frozenset({Role.ADMIN})
REASON_MAX = 2000
ID_MAX = 64  # transport bound; operations name an unknown or malformed id precisely
SELECTION = {"recording_ids", "in_case"}


def plain(value: Any) -> Any:
    """A result as JSON values: dataclasses as objects, times as UTC ISO 8601."""
    if isinstance(value, datetime):
        return iso(value)
    if is_dataclass(value) and not isinstance(value, type):
        return plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _required_text(args: Args, key: str, max_length: int = REASON_MAX) -> str:
    value = args.text(key, max_length)
    if value is None:
        args.fail(f"{key} is required")
    return value


def _selection(args: Args) -> dict[str, Any]:
    return {"recording_ids": args.integers("recording_ids"), "in_case": args.text("in_case", 64)}


# --- custody -------------------------------------------------------------------------------------------


@command("checkout", roles=CUSTODIANS, mutates=True)
def checkout(services: Services, request: Request) -> dict[str, Any]:
    args = Args("checkout", request.args, {"device", "officer_no"})
    device = _required_text(args, "device", ID_MAX)
    with services.catalog.transaction() as session:
        out_since = session.scalar(select(Camera.checked_out_at).where(Camera.device_serial == device))
        entry = operations.checkout(
            session,
            services.audit,
            actor=request.actor,
            now=request.now,
            device_serial=device,
            officer_no=args.text("officer_no", ID_MAX),
        )
        # Recorded all the same (a clerk naming who really has it), but a second check-out is worth a look.
        warning = (
            None
            if out_since is None
            else f"{device} was already checked out (since {iso(out_since)}): recorded as a re-attribution, "
            "its time out unchanged; check it in first if it came back"
        )
        return {"custody": plain(entry), "warning": warning}


@command("checkin", roles=CUSTODIANS, mutates=True)
def checkin(services: Services, request: Request) -> dict[str, Any]:
    args = Args("checkin", request.args, {"device", "note"})
    with services.catalog.transaction() as session:
        entry = operations.checkin(
            session,
            services.audit,
            actor=request.actor,
            now=request.now,
            device_serial=_required_text(args, "device", ID_MAX),
            note=args.text("note", REASON_MAX),
        )
        return {"custody": plain(entry)}


@command("custody", roles=EVERYONE)
def custody(services: Services, request: Request) -> dict[str, Any]:
    args = Args("custody", request.args, {"device", "officer_no"})
    with services.catalog.transaction() as session:
        entries = operations.custody_history(
            session, device_serial=args.text("device", ID_MAX), officer_no=args.text("officer_no", ID_MAX)
        )
        return {"custody": plain(entries)}


# --- flags ---------------------------------------------------------------------------------------------


@command("flags", roles=EVERYONE)
def flags(services: Services, request: Request) -> dict[str, Any]:
    args = Args("flags", request.args, {"all"})
    with services.catalog.transaction() as session:
        found = operations.list_flags(session, include_closed=args.flag("all"))
        return {"flags": [flag.as_json() for flag in found]}


@command("explain", roles=CUSTODIANS, mutates=True)
def explain(services: Services, request: Request) -> dict[str, Any]:
    args = Args("explain", request.args, {"flag_id", "text"})
    flag_id = args.optional_integer("flag_id", low=1)
    if flag_id is None:
        args.fail("flag_id is required")
    with services.catalog.transaction() as session:
        flag = operations.explain(
            session,
            services.audit,
            actor=request.actor,
            now=request.now,
            flag_id=flag_id,
            text=_required_text(args, "text"),
        )
        return {"flag": flag.as_json()}


# --- classification, holds, deadlines ----------------------------------------------------------------


@command("tag", roles=CUSTODIANS | RELEASERS, mutates=True)
def tag(services: Services, request: Request) -> dict[str, Any]:
    fields = {"case_id", "case_party", "case_name", "event", "place", "confidentiality"}
    args = Args("tag", request.args, SELECTION | fields | {"add_tags", "remove_tags", "retention_class"})
    confidentiality = args.choice("confidentiality", [c.value for c in Confidentiality])
    retention_class = args.choice("retention_class", [c.value for c in RetentionClass])
    with services.catalog.transaction() as session:
        results = operations.tag(
            session,
            services.audit,
            actor=request.actor,
            now=request.now,
            retention=services.config.retention,
            **_selection(args),
            case_id=args.text("case_id", REASON_MAX),
            case_party=args.text("case_party", REASON_MAX),
            case_name=args.text("case_name", REASON_MAX),
            event=args.text("event", REASON_MAX),
            place=args.text("place", REASON_MAX),
            confidentiality=Confidentiality(confidentiality) if confidentiality else None,
            add_tags=args.texts("add_tags"),
            remove_tags=args.texts("remove_tags"),
            retention_class=RetentionClass(retention_class) if retention_class else None,
        )
        return {"changes": plain(results)}


def _legal_hold(
    services: Services, request: Request, change: Callable[..., list[operations.Change]]
) -> dict[str, Any]:
    args = Args(request.command, request.args, SELECTION | {"reason"})
    with services.catalog.transaction() as session:
        results = change(
            session,
            services.audit,
            actor=request.actor,
            now=request.now,
            reason=_required_text(args, "reason"),
            **_selection(args),
        )
        return {"changes": plain(results)}


@command("hold", roles=HOLDERS, mutates=True)
def hold(services: Services, request: Request) -> dict[str, Any]:
    return _legal_hold(services, request, operations.hold)


@command("release", roles=RELEASERS, mutates=True)
def release(services: Services, request: Request) -> dict[str, Any]:
    return _legal_hold(services, request, operations.release)


@command("extend", roles=RELEASERS, mutates=True)
def extend(services: Services, request: Request) -> dict[str, Any]:
    args = Args("extend", request.args, {"recording_id", "working_days", "reason"})
    recording_id = args.optional_integer("recording_id", low=1)
    if recording_id is None:
        args.fail("recording_id is required")
    with services.catalog.transaction() as session:
        result = operations.extend(
            session,
            services.audit,
            actor=request.actor,
            now=request.now,
            deadlines=services.config.deadlines,
            recording_id=recording_id,
            working_days=args.integer("working_days", 0, 1, 365),
            reason=_required_text(args, "reason"),
        )
        return {"extension": plain(result)}


@command("purge", roles=PURGERS, mutates=True)
def purge_command(services: Services, request: Request) -> dict[str, Any]:
    args = Args("purge", request.args, {"dry_run"})
    report = purge.purge(
        services.catalog,
        services.store,
        services.audit,
        actor=request.actor,
        now=request.now,
        rules=services.config.retention.rules(),
        dry_run=args.flag("dry_run"),
    )
    return {"purge": report.as_json()}
