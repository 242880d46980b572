"""The control protocol: one JSON object per line over a Unix stream socket.

Request  {"id": <str|int>, "command": <str>, "args": {...}}
Response {"id": ..., "ok": true, "result": ...}
       | {"id": ..., "ok": false, "error": {"code": <str>, "message": <str>, "exit_code": <int>}}

An answer may also hand the caller one open file (`view`: the stored object, opened read-only by the
daemon, so the caller needs no access to the store). Its descriptor travels as SCM_RIGHTS ancillary data
with the first bytes of the answer's line; the JSON `result` says what the file is (its size and
digests), and the daemon closes its own copy once sent. A client that expects a file reads the answer
with recvmsg (`client.call_with_fd`); any other read discards the descriptor (the kernel closes it).
The other way round, a request may hand the daemon one open directory the same way (`export`, `copy`:
the new DEST.partial the caller made, which the daemon fills without ever resolving the caller's path);
the server passes it to the handler as `Request.passed_fds` and closes it once the answer is sent.

Guarantees: a request longer than MAX_REQUEST_BYTES, nested deeper than MAX_NESTING, not UTF-8 (an
unpaired surrogate escape included), not JSON, or not of that shape is answered with a `bad-request`
error naming what is wrong; it never reaches a handler. Nesting is measured before any JSON is decoded,
so no input can exhaust the decoder's stack.
"""

from __future__ import annotations

import array
import json
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from ingestd.errors import IngestdError
from ingestd.exit_codes import ExitCode

MAX_REQUEST_BYTES = 1024 * 1024
MAX_RESPONSE_BYTES = 256 * 1024 * 1024  # an audit export can be large; the client still bounds it
MAX_NESTING = 32  # arrays and objects, the request object included; real requests use three
COMMAND_NAME = re.compile(r"[a-z][a-z0-9._-]{0,59}")  # "ctl." + name fits audit_events.action


class ProtocolError(IngestdError):
    """A message on the control socket does not follow the protocol."""

    template = "control protocol: {detail}"
    exit_code = ExitCode.PROTOCOL


@dataclass(frozen=True)
class Message:
    id: str | int | None
    command: str
    args: Mapping[str, Any]
    fds: tuple[int, ...] = ()  # descriptors the caller sent with the request (owned by the server)


_FD = array.array("i")  # a descriptor as SCM_RIGHTS carries it: a C int


def receive(connection: socket.socket, size: int, fds: list[int], max_fds: int) -> tuple[bytes, bool]:
    """Up to `size` bytes, and into `fds` the descriptors sent with them (close-on-exec); True as the
    second value when more than `max_fds` were sent (the kernel closed the rest)."""
    # recvmsg, not socket.recv_fds: that drops its flags argument (Python 3.11), and a descriptor must
    # arrive close-on-exec rather than be marked so afterwards.
    space = socket.CMSG_SPACE(max_fds * _FD.itemsize)
    chunk, ancillary, flags, _ = connection.recvmsg(size, space, socket.MSG_CMSG_CLOEXEC)
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array(_FD.typecode, data[: len(data) - len(data) % _FD.itemsize]))
    return chunk, bool(flags & socket.MSG_CTRUNC)


@dataclass(frozen=True)
class PassedFile:
    """A handler's whole result when it hands the caller an open file: `result` is the JSON answer and
    `file`'s descriptor is sent with it. The server closes `file` once sent (or when sending fails); an
    answer dropped before sending (say, its audit event could not be written) closes it when collected."""

    result: Any
    file: BinaryIO


def _json_part(value: object) -> Any:
    if isinstance(value, PassedFile):
        return value.result
    raise TypeError(f"{type(value).__name__} is not JSON")


def encode(value: Mapping[str, Any]) -> bytes:
    """One line of JSON; of a `PassedFile`, its result (the file goes beside the line, see `passed_file`)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_part)
    return text.encode() + b"\n"


def passed_file(response: Mapping[str, Any]) -> PassedFile | None:
    """The file a response hands over along with its line, if it hands one over."""
    result = response.get("result")
    return result if isinstance(result, PassedFile) else None


# A JSON string, or an unterminated one up to the end: always matches, so the scan stays linear.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_BRACKETS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[{]}"))


# Only an escape can smuggle a surrogate past the UTF-8 check; a valid pair decodes to one character.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _encodable(data: object) -> bool:
    """Whether `data` encodes as UTF-8 (what the audit trail and the catalog store)."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def too_deep(line: bytes, limit: int = MAX_NESTING) -> bool:
    """Whether arrays and objects in `line` nest deeper than `limit`, found without recursion: with
    strings removed and every bracket made `(` or `)`, each pass deletes every innermost `()` pair, so a
    pair left after `limit` passes sits deeper than `limit`. More than `limit` openers never closed
    count too: a decoder descends into each of them before it finds the end."""
    shape = _JSON_STRING.sub(b"", line).translate(_BRACKETS, _NOT_BRACKETS)
    for _ in range(limit):
        if b"()" not in shape:
            break
        shape = shape.replace(b"()", b"")
    return b"()" in shape or shape.count(b"(") > limit


def parse_request(line: bytes) -> Message:
    """Decode one request line (without or with its newline); raises ProtocolError on anything else."""
    if len(line) > MAX_REQUEST_BYTES:
        raise ProtocolError(detail=f"request is larger than {MAX_REQUEST_BYTES} bytes")
    if too_deep(line):
        raise ProtocolError(detail=f"request is nested deeper than {MAX_NESTING} levels")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ProtocolError(detail=f"request is not UTF-8 (byte {error.start})") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ProtocolError(detail=f"request is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise ProtocolError(detail="request must be a JSON object")
    if _SURROGATE_ESCAPE.search(line) and not _encodable(data):
        raise ProtocolError(
            detail="request has an unpaired surrogate (\\ud800-\\udfff escape): not Unicode text"
        )
    unknown = set(data) - {"id", "command", "args"}
    if unknown:
        raise ProtocolError(detail=f"unknown request field(s): {', '.join(sorted(unknown))}")
    request_id = data.get("id")
    if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, str | int)):
        raise ProtocolError(detail="id must be a string or an integer")
    name = data.get("command")
    if not isinstance(name, str) or not COMMAND_NAME.fullmatch(name):
        raise ProtocolError(detail="command must be a lower-case command name")
    args = data.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError(detail="args must be a JSON object")
    return Message(id=request_id, command=name, args=args)


def request_id_of(line: bytes) -> str | int | None:
    """Best effort: the id of a request that failed to parse, so the error can still be matched."""
    if len(line) > MAX_REQUEST_BYTES or too_deep(line):
        return None
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str | int) and not isinstance(value, bool) else None


def ok(request_id: str | int | None, result: Any) -> dict[str, Any]:
    return {"id": request_id, "ok": True, "result": result}


def error_code(error: BaseException) -> str:
    """A stable code from the class name: PermissionDenied -> permission-denied."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", type(error).__name__).lower().removesuffix("-error")


def failure(request_id: str | int | None, code: str, message: str, exit_code: int) -> dict[str, Any]:
    error = {"code": code, "message": message, "exit_code": exit_code}
    return {"id": request_id, "ok": False, "error": error}


def parse_response(line: bytes, expected_id: str | int | None) -> dict[str, Any]:
    """Decode one response line and check its shape and id; raises ProtocolError otherwise."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as error:
        raise ProtocolError(detail=f"the daemon's answer is not JSON: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
        raise ProtocolError(detail="the daemon's answer has no ok field")
    # An error without an id refuses the connection itself (a cap, the lifetime) or an unreadable request.
    if data.get("id") != expected_id and not (data.get("id") is None and data["ok"] is False):
        raise ProtocolError(detail=f"answer for request {data.get('id')!r}, expected {expected_id!r}")
    if not data["ok"]:
        problem = data.get("error")
        if (
            not isinstance(problem, dict)
            or not isinstance(problem.get("message"), str)
            or not isinstance(problem.get("exit_code"), int)
        ):
            raise ProtocolError(detail="the daemon's error answer is malformed")
    return data
