"""The one way `ingestctl` asks the daemon: one request over the configured control socket, one answer.

Guarantees: arguments left unset (None or a false flag) are not sent; the timeout is the config's
unless a command needs longer; every failure is an `IngestdError` whose exit code comes from
`ingestd.exit_codes` (or the daemon's own answer), which `ingestd.commandline.run_cli` prints as one
line. A caller the kernel keeps off the socket gets exit 13 naming the group that opens it.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ingestd.commandline import load
from ingestd.config import Config
from ingestd.control import client as transport
from ingestd.control.client import SocketAccessDenied


def call(
    config: Config,
    command: str,
    args: Mapping[str, Any],
    *,
    timeout: float | None = None,
    pass_fd: int | None = None,
) -> Any:
    """Send `command` (with `pass_fd`, handing the daemon that open descriptor) and return its result."""
    try:
        return transport.call(
            config.control.socket, command, given(args), _timeout(config, timeout), pass_fd=pass_fd
        )
    except SocketAccessDenied:
        raise _access_denied(config) from None


def call_with_fd(config: Config, command: str, args: Mapping[str, Any]) -> tuple[Any, int]:
    """Send `command`, whose answer hands over one open file: the result and that descriptor, which the
    caller closes."""
    try:
        return transport.call_with_fd(config.control.socket, command, given(args), _timeout(config, None))
    except SocketAccessDenied:
        raise _access_denied(config) from None


def ask(
    config_path: Path | None,
    command: str,
    args: Mapping[str, Any],
    *,
    timeout: float | None = None,
    pass_fd: int | None = None,
) -> Any:
    """`call`, for a command that has only its --config path at hand."""
    return call(load(config_path), command, args, timeout=timeout, pass_fd=pass_fd)


def given(args: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments the user gave: unset ones (None, a false flag) are left for the daemon's defaults."""
    return {key: value for key, value in args.items() if value is not None and value is not False}


def _timeout(config: Config, timeout: float | None) -> float:
    return timeout if timeout is not None else config.control.timeout_seconds


def _access_denied(config: Config) -> SocketAccessDenied:
    """Who is refused, and the group that would let them in: the configured one, else the socket's own."""
    path = config.control.socket
    group = config.control.socket_group or _socket_group(path)
    user = _user_name()
    if group is None:
        remedy = f"ask an administrator to add user {user} to the group of the socket"
    else:
        remedy = f"add user {user} to group '{group}' (and log in again)"
    return SocketAccessDenied(path=path, remedy=remedy)


def _socket_group(path: Path) -> str | None:
    try:
        gid = path.stat().st_gid
    except OSError:  # its directory is closed to us too
        return None
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"
