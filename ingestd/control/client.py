"""What `ingestctl` calls: one request over the control socket, one answer (and, for `call_with_fd`, the
one open file the answer hands over).

Guarantees: a missing or dead daemon is `DaemonUnavailable` (exit 69) naming the socket; a socket the
kernel refuses to connect (not in its group) is `SocketAccessDenied` (exit 13); an error the daemon
answers with is re-raised as an `IngestdError` carrying the daemon's message and exit code; a
descriptor received with an answer that is not returned is closed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ingestd.control import protocol
from ingestd.errors import IngestdError
from ingestd.exit_codes import ExitCode

CHUNK = 1 << 20
MAX_PASSED_FILES = 1  # room for one descriptor; more set MSG_CTRUNC and the kernel closes the rest
_ids = itertools.count(1)


class DaemonUnavailable(IngestdError):  # noqa: N818 - reads as the situation it names
    template = "ingestd is not running ({detail})"
    exit_code = ExitCode.UNAVAILABLE


class ControlTimeoutError(IngestdError):
    template = "ingestd did not answer {command} within {timeout:g}s (socket {path})"
    exit_code = ExitCode.TEMPFAIL


class SocketAccessDenied(IngestdError):  # noqa: N818 - reads as the situation it names
    """The kernel refused the connection (EACCES): the caller is not in the socket's group."""

    template = "permission denied on {path}: {remedy}"
    exit_code = ExitCode.PERMISSION_DENIED

    def __init__(self, *, path: Path, remedy: str = "ask an administrator for access to it") -> None:
        super().__init__(path=path, remedy=remedy)


class RemoteError(IngestdError):
    """An error the daemon answered with; its exit code is the daemon's."""

    template = "{message}"

    def __init__(self, *, code: str, message: str, exit_code: int) -> None:
        super().__init__(message=message)
        self.code = code
        # Per instance: the daemon chose it. (The class attribute is the root's default.)
        self.__dict__["exit_code"] = exit_code


def call(
    socket_path: Path,
    command: str,
    args: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
    *,
    pass_fd: int | None = None,
) -> Any:
    """Send one request (with `pass_fd`, handing the daemon that open descriptor) and return its result."""
    return _exchange(socket_path, command, args, timeout, None, pass_fd=pass_fd)


def call_with_fd(
    socket_path: Path, command: str, args: Mapping[str, Any] | None = None, timeout: float = 30.0
) -> tuple[Any, int]:
    """Send one request whose answer hands over an open file (see `protocol`); return the result and the
    file's descriptor, close-on-exec, which the caller must close. An answer that hands over no file, or
    more than one, is a ProtocolError."""
    fds: list[int] = []
    try:
        result = _exchange(socket_path, command, args, timeout, fds)
    except BaseException:
        _close_all(fds)
        raise
    if len(fds) != 1:
        _close_all(fds)
        raise protocol.ProtocolError(
            detail=f"the answer to {command} hands over {len(fds)} files, expected one"
        )
    return result, fds[0]


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _exchange(
    socket_path: Path,
    command: str,
    args: Mapping[str, Any] | None,
    timeout: float,
    fds: list[int] | None,
    *,
    pass_fd: int | None = None,
) -> Any:
    """One request and its answer's result; with `fds`, the descriptors the answer hands over go there."""
    request_id = f"{os.getpid()}-{next(_ids)}"
    payload = protocol.encode({"id": request_id, "command": command, "args": dict(args or {})})
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.settimeout(timeout)
        try:
            connection.connect(str(socket_path))
        except FileNotFoundError:
            raise DaemonUnavailable(detail=f"no socket at {socket_path}") from None
        except ConnectionRefusedError:
            raise DaemonUnavailable(detail=f"nobody listens on {socket_path}") from None
        except PermissionError:
            raise SocketAccessDenied(path=socket_path) from None
        # Refused before reading (a connection cap): its one error line may still wait to be read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if pass_fd is None:
                connection.sendall(payload)
            else:
                sent = socket.send_fds(connection, [payload], [pass_fd])
                connection.sendall(payload[sent:])  # the descriptor went with the first bytes
        line = _read_line(connection, command, socket_path, timeout, fds)
    except TimeoutError:
        raise ControlTimeoutError(command=command, timeout=timeout, path=socket_path) from None
    except (ConnectionResetError, BrokenPipeError):
        raise DaemonUnavailable(detail=f"it closed the connection on {socket_path}") from None
    finally:
        connection.close()
    answer = protocol.parse_response(line, request_id)
    if not answer["ok"]:
        error = answer["error"]
        raise RemoteError(
            code=str(error.get("code", "error")), message=error["message"], exit_code=error["exit_code"]
        )
    return answer.get("result")


def _receive(connection: socket.socket, command: str, fds: list[int] | None) -> bytes:
    if fds is None:
        return connection.recv(CHUNK)  # a descriptor sent anyway is discarded by the kernel
    chunk, truncated = protocol.receive(connection, CHUNK, fds, MAX_PASSED_FILES)
    if truncated:
        raise protocol.ProtocolError(detail=f"the answer to {command} hands over more files than expected")
    return chunk


def _read_line(
    connection: socket.socket, command: str, path: Path, timeout: float, fds: list[int] | None
) -> bytes:
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        connection.settimeout(remaining)
        chunk = _receive(connection, command, fds)
        if not chunk:
            raise DaemonUnavailable(detail=f"it closed the connection on {path} before answering {command}")
        newline = chunk.find(b"\n")
        if newline >= 0:
            chunks.append(chunk[:newline])
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > protocol.MAX_RESPONSE_BYTES:
            raise protocol.ProtocolError(detail=f"the answer to {command} is larger than allowed")
