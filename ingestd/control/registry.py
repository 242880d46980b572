"""Control commands: who may run them, and whether running one is audited.

Guarantees: a command runs only for a caller holding one of its `roles`; the dispatcher
(`ingestd.control.dispatch`) audits every call of a `mutates` or `footage` command as action
"ctl.<name>" with outcome ok/error/denied, and every denied call of any command. Handlers are plain
functions registered with `@command(...)`; modules named `ingestd.control.handlers_*` are imported by the
server, so registering a handler needs no other edit. A handler returns plain JSON, or a
`protocol.PassedFile` to hand the caller one open file along with it (sent over the socket, never a path).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ingestd.errors import IngestdError
from ingestd.exit_codes import ExitCode
from ingestd.services import Services
from store.audit import Actor, Role

# Role sets handlers usually want. SYSTEM is the daemon itself and never a socket caller.
EVERYONE = frozenset({Role.ADMIN, Role.CLERK, Role.APPROVER, Role.AUDITOR, Role.VIEWER})
OVERSIGHT = frozenset({Role.ADMIN, Role.APPROVER, Role.AUDITOR})


class PermissionDenied(IngestdError):  # noqa: N818 - the issue's word; exit 13 like EACCES
    """The caller's roles do not allow this command."""

    template = "permission denied: {detail}"
    exit_code = ExitCode.PERMISSION_DENIED
    wire_code = "permission-denied"


class UnknownCommand(IngestdError):  # noqa: N818 - reads as the message it carries
    template = "unknown command {name!r}"
    exit_code = ExitCode.USAGE
    wire_code = "unknown-command"


@dataclass(frozen=True)
class Request:
    command: str
    args: Mapping[str, Any]
    actor: Actor  # the real OS identity from SO_PEERCRED, role from its groups
    now: datetime  # tz-aware UTC, injected
    passed_fds: tuple[int, ...] = ()  # descriptors the caller sent with the request; the server closes them
    clock: Callable[[], datetime] | None = None  # the server's clock, for a check after a long wait

    def later(self) -> datetime:
        """The time now, for checking again after a long step (never before `now`)."""
        return max(self.now, self.clock()) if self.clock is not None else self.now


Handler = Callable[[Services, Request], Any]


@dataclass(frozen=True)
class CommandSpec:
    name: str
    roles: frozenset[Role]
    mutates: bool
    footage: bool
    handler: Handler

    @property
    def audited(self) -> bool:
        return self.mutates or self.footage


_COMMANDS: dict[str, CommandSpec] = {}


def command(
    name: str, *, roles: frozenset[Role], mutates: bool = False, footage: bool = False
) -> Callable[[Handler], Handler]:
    """Register `handler` as control command `name`; a second registration of a name is a bug."""
    if not roles or Role.SYSTEM in roles:
        raise ValueError(f"command {name!r}: roles must name at least one caller role, never system")

    def register(handler: Handler) -> Handler:
        existing = _COMMANDS.get(name)
        if existing is not None and existing.handler is not handler:
            raise ValueError(f"control command {name!r} is registered twice")
        _COMMANDS[name] = CommandSpec(name, frozenset(roles), mutates, footage, handler)
        return handler

    return register


def lookup(name: str) -> CommandSpec:
    try:
        return _COMMANDS[name]
    except KeyError:
        raise UnknownCommand(name=name) from None


def names() -> list[str]:
    return sorted(_COMMANDS)
