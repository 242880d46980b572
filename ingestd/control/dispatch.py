"""Running one control request: authorise, run the handler, audit, and shape the answer.

Guarantees: a caller without a role allowed by the command never reaches its handler; every such
refusal is audited ("ctl.<name>", outcome "denied") with the real OS identity. A `mutates` or `footage`
command is audited with outcome ok or error; the result of a footage command is withheld when its audit
event cannot be written, so no footage access goes unrecorded. Arguments named like secrets are never
written to the audit trail. Refusals of one kind from one uid are aggregated (`denials`): the first is
audited at once, the rest of its interval as one event with their count. No event's details exceed
MAX_AUDIT_DETAILS_BYTES, whatever the request: oversized arguments are kept as their digest and key
count, an overlong error message is cut and marked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import structlog

from drivers.base import DriverError
from ingestd.control import protocol
from ingestd.control.auth import Caller
from ingestd.control.denials import DenialAggregator, Repeated
from ingestd.control.registry import CommandSpec, PermissionDenied, Request, UnknownCommand, lookup
from ingestd.errors import IngestdError
from ingestd.exit_codes import ExitCode
from ingestd.services import Services
from store.audit import Role
from store.errors import StoreError

log = structlog.get_logger()

SECRET_WORDS = ("password", "secret", "token", "passphrase", "private", "key")
MAX_AUDIT_DETAILS_BYTES = 4096  # of one event's details, as UTF-8 JSON
MAX_AUDITED_ARGS_BYTES = 2048
MAX_AUDITED_ERROR_CHARS = 400  # at most 4 UTF-8 bytes a character: 1.6 KiB
UNKNOWN_ACTION = "ctl.unknown"  # a caller with no role, naming no command: one kind, whatever the name


def _size(value: object) -> int:
    return len(json.dumps(value, ensure_ascii=False, sort_keys=True, default=str).encode())


def redact(args: Mapping[str, Any], limit: int = MAX_AUDITED_ARGS_BYTES) -> dict[str, Any]:
    """Args as the audit trail keeps them: secrets masked; args over `limit` bytes replaced by the
    SHA-256 of their (masked) JSON and how many keys they had."""
    kept = {k: ("***" if any(w in k.lower() for w in SECRET_WORDS) else v) for k, v in args.items()}
    text = json.dumps(kept, ensure_ascii=False, sort_keys=True, default=str).encode()
    if len(text) > limit:
        return {"truncated": True, "sha256": hashlib.sha256(text).hexdigest(), "key_count": len(kept)}
    return kept


def clip(text: str, limit: int = MAX_AUDITED_ERROR_CHARS) -> str:
    """`text`, cut to `limit` characters and marked so when longer."""
    return text if len(text) <= limit else f"{text[:limit]}… [{len(text)} characters]"


def _details(caller: Caller, args: Mapping[str, Any], error: str | None, **more: Any) -> dict[str, Any]:
    details: dict[str, Any] = {"args": redact(args), "roles": sorted(caller.roles), **more}
    if error is not None:
        details["error"] = clip(error)
    if _size(details) > MAX_AUDIT_DETAILS_BYTES:  # a long error beside long args: keep the args' digest
        details["args"] = redact(args, limit=0)
    return details


def _audit(
    services: Services,
    caller: Caller,
    *,
    spec_roles: frozenset[Any] | None,
    name: str,
    args: Mapping[str, Any],
    outcome: str,
    now: datetime,
    error: str | None = None,
    action: str | None = None,
    **more: Any,
) -> None:
    with services.catalog.transaction() as db:
        services.audit.append(
            db,
            actor=caller.actor(spec_roles),
            action=action or f"ctl.{name}",
            subject=name,
            outcome=outcome,
            details=_details(caller, args, error, **more),
            at=now,
        )
    # Sign the head now, so deleting this command's event (even the newest) is caught by verify.
    services.audit.anchor(services.catalog)


def audit_repeated(services: Services, repeated: Repeated, now: datetime) -> None:
    """One event for refusals that were counted: how many, the first and last time, the latest error."""
    _audit(
        services,
        repeated.caller,
        spec_roles=None,
        name=repeated.action.removeprefix("ctl."),
        args={},
        outcome="denied",
        now=now,
        error=repeated.error,
        action=repeated.action,
        count=repeated.count,
        first_at=repeated.first_at.isoformat(),
        last_at=repeated.last_at.isoformat(),
    )
    log.warning(
        "control_denied_repeatedly", uid=repeated.caller.uid, action=repeated.action, count=repeated.count
    )


def _failure(request_id: str | int | None, error: IngestdError | StoreError | DriverError) -> dict[str, Any]:
    return protocol.failure(request_id, protocol.error_code(error), str(error), error.exit_code)


def _duties(spec: CommandSpec | None, caller: Caller) -> str:
    """Why an admin is refused a command: the admin role deliberately does not include it."""
    if spec is None or Role.ADMIN not in caller.roles or Role.ADMIN in spec.roles:
        return ""
    only = " or ".join(sorted(spec.roles))
    return f" (separation of duties: admin does not include {spec.name}; only {only} may)"


def dispatch(
    services: Services,
    caller: Caller,
    message: protocol.Message,
    now: datetime,
    *,
    denials: DenialAggregator,
    mono: float,
    clock: Callable[[], datetime] | None = None,
) -> dict[str, Any]:
    """The response to one request. Never raises for a handler's failure: it becomes an error answer.
    `mono` is the monotonic time that `denials` counts intervals in."""
    spec: CommandSpec | None
    try:
        spec = lookup(message.command)
    except UnknownCommand as error:
        if caller.roles:
            return _failure(message.id, error)
        spec = None  # a caller with no role is refused (and audited) before learning what exists
    if spec is None or not caller.roles & spec.roles:
        denied = PermissionDenied(
            detail=(
                f"{caller.user} (uid {caller.uid}) has no ingestd role"
                if not caller.roles
                else f"{message.command} needs one of the roles "
                f"{', '.join(sorted(spec.roles)) if spec else '?'}; {caller.user} has "
                f"{', '.join(sorted(caller.roles))}{_duties(spec, caller)}"
            )
        )
        action = f"ctl.{spec.name}" if spec is not None else UNKNOWN_ACTION
        if not denials.admit(caller, action, str(denied), mono=mono, at=now):
            return _failure(message.id, denied)  # counted; audited with its interval's count
        log.warning("control_denied", user=caller.user, uid=caller.uid, command=message.command)
        try:
            _audit(
                services,
                caller,
                spec_roles=None,
                name=message.command,
                args=message.args,
                outcome="denied",
                now=now,
                error=str(denied),
                action=action,
            )
        except (IngestdError, StoreError) as error:
            log.error("control_audit_failed", command=message.command, error=str(error))  # noqa: TRY400
        return _failure(message.id, denied)

    request = Request(
        command=spec.name,
        args=message.args,
        actor=caller.actor(spec.roles),
        now=now,
        passed_fds=message.fds,
        clock=clock,
    )
    try:
        result = spec.handler(services, request)
        response = protocol.ok(message.id, result)
        protocol.encode(response)  # a result that is not plain JSON is a handler bug: fail here, audited
    except (IngestdError, StoreError, DriverError) as error:
        if spec.audited:
            _audit_or_log(services, caller, spec=spec, message=message, now=now, error=str(error))
        return _failure(message.id, error)
    except Exception as error:
        # Not swallowed: logged with its traceback and answered as an internal error; the server keeps
        # serving other callers (DESIGN: one bad request never stops the daemon).
        log.exception("control_handler_crashed", command=spec.name, user=caller.user)
        if spec.audited:
            _audit_or_log(services, caller, spec=spec, message=message, now=now, error=f"internal: {error!r}")
        return protocol.failure(
            message.id,
            protocol.INTERNAL,
            f"{spec.name} failed inside ingestd: {error!r} (see the daemon log)",
            ExitCode.SOFTWARE,
        )
    if spec.audited:
        try:
            _audit(
                services,
                caller,
                spec_roles=spec.roles,
                name=spec.name,
                args=message.args,
                outcome="ok",
                now=now,
            )
        except (IngestdError, StoreError) as error:
            log.error("control_audit_failed", command=spec.name, error=str(error))  # noqa: TRY400
            return protocol.failure(
                message.id,
                protocol.AUDIT_FAILED,
                f"{spec.name} was done but its audit event could not be written: {error}",
                ExitCode.SOFTWARE,
            )
    return response


def _audit_or_log(
    services: Services,
    caller: Caller,
    *,
    spec: CommandSpec,
    message: protocol.Message,
    now: datetime,
    error: str,
) -> None:
    try:
        _audit(
            services,
            caller,
            spec_roles=spec.roles,
            name=spec.name,
            args=message.args,
            outcome="error",
            now=now,
            error=error,
        )
    except (IngestdError, StoreError) as audit_error:
        log.error("control_audit_failed", command=spec.name, error=str(audit_error))  # noqa: TRY400
