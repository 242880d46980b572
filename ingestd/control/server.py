"""The control socket inside the daemon: accepts `ingestctl` connections and answers their requests.

Guarantees: the caller's identity is the kernel's (SO_PEERCRED); each connection is served on its own
short-lived thread with a deadline, so a slow or hostile client never blocks another. At most
`[control] max_connections` are served at once and `max_connections_per_uid` for one uid, so one local
user cannot take every slot; a refused connection gets one error line, and its refusal is audited with
the others of its interval (`denials`). A connection is closed `connection_lifetime_seconds` after it
was accepted, however busy its client keeps it (a request being answered is answered first). A file a
handler hands over
(`protocol.PassedFile`) is sent with its answer and closed here. The socket is mode 0660, owned by
`[control] socket_group`; a stale socket file left by a crash is replaced, a live one is not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import importlib
import os
import pkgutil
import socket
import stat
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import structlog

from ingestd.config import ControlConfig
from ingestd.control import auth, protocol
from ingestd.control.denials import DenialAggregator, Repeated
from ingestd.control.dispatch import audit_repeated, dispatch
from ingestd.errors import IngestdError
from ingestd.exit_codes import ExitCode
from ingestd.services import Services
from store.errors import StoreError

log = structlog.get_logger()

MAX_PASSED_FDS = 1  # export and copy hand over their destination directory; nothing needs more
ACCEPT_TICK_S = 0.25
DENIAL_FLUSH_TICK_S = 1.0
CONNECT_ACTION = "ctl.connect"
SOCKET_MODE = 0o660


class ControlSocketError(IngestdError):
    template = "control socket {path}: {detail}"
    exit_code = ExitCode.OUTPUT_FAILED
    wire_code = "control-socket"


def load_handlers() -> list[str]:
    """Import every `ingestd.control.handlers_*` module, so their `@command`s are registered."""
    import ingestd.control as package  # noqa: PLC0415 - the package's own path, read at call time

    loaded = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("handlers_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
            loaded.append(info.name)
    return sorted(loaded)


def _remove_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlSocketError(path=path, detail="exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: a crash left it behind
        return
    finally:
        probe.close()
    raise ControlSocketError(path=path, detail="another ingestd is already listening on it")


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


class ControlServer:
    def __init__(self, services: Services, config: ControlConfig, *, clock: Callable[[], datetime]) -> None:
        self.services = services
        self.config = config
        self.clock = clock
        self.stop_event = threading.Event()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._inode: int | None = None
        self._open_lock = threading.Lock()
        self._open: dict[int, int] = {}  # uid -> connections being served
        self.denials = DenialAggregator(config.denial_audit_interval_seconds)
        self._flusher: threading.Thread | None = None

    @property
    def path(self) -> Path:
        return self.config.socket

    def start(self) -> None:
        handlers = load_handlers()
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        _remove_stale(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Bind under a umask that leaves no window in which the socket is wider than 0660.
            old_umask = os.umask(0o117)
            try:
                listener.bind(str(path))
            finally:
                os.umask(old_umask)
            if self.config.socket_group:
                try:
                    gid = grp.getgrnam(self.config.socket_group).gr_gid
                except KeyError:
                    raise ControlSocketError(
                        path=path, detail=f"socket_group {self.config.socket_group!r} does not exist"
                    ) from None
                os.chown(path, -1, gid)
            path.chmod(SOCKET_MODE)
            self._inode = path.stat().st_ino
            listener.listen(64)
            listener.settimeout(ACCEPT_TICK_S)
        except OSError as error:
            listener.close()
            raise ControlSocketError(path=path, detail=error.strerror or str(error)) from None
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, name="control-socket", daemon=True)
        self._thread.start()
        self._flusher = threading.Thread(target=self._flush_denials, name="control-denials", daemon=True)
        self._flusher.start()
        log.info("control_listening", socket=str(path), handlers=handlers)

    def _serve(self) -> None:
        listener = self._listener
        while listener is not None and not self.stop_event.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError as error:
                if self.stop_event.is_set():
                    return
                log.error("control_accept_failed", error=str(error))  # noqa: TRY400
                time.sleep(ACCEPT_TICK_S)
                continue
            accepted = time.monotonic()
            try:
                peer = auth.peer_credentials(connection)
            except OSError as error:
                connection.close()
                log.info("control_client_gone", error=str(error))
                continue
            refusal = self._take_slot(peer.uid)
            if refusal is not None:
                self._refuse(connection, peer, *refusal)
                continue
            threading.Thread(
                target=self._connection, args=(connection, peer, accepted), name="control-conn", daemon=True
            ).start()

    def _take_slot(self, uid: int) -> tuple[str, str] | None:
        """Count a connection of `uid` in; or the refusal's code and message when a cap is reached."""
        with self._open_lock:
            mine = self._open.get(uid, 0)
            if mine >= self.config.max_connections_per_uid:
                return protocol.TOO_MANY_CONNECTIONS, (
                    f"uid {uid} already has {mine} connections open to ingestd (at most "
                    f"{self.config.max_connections_per_uid}); close one and try again"
                )
            if sum(self._open.values()) >= self.config.max_connections:
                return protocol.BUSY, "ingestd is busy; try again"
            self._open[uid] = mine + 1
        return None

    def _release_slot(self, uid: int) -> None:
        with self._open_lock:
            left = self._open[uid] - 1
            if left:
                self._open[uid] = left
            else:
                del self._open[uid]

    def _refuse(self, connection: socket.socket, peer: auth.Peer, code: str, message: str) -> None:
        """Answer a connection that gets no slot, from the accept loop: the refusal is counted, and its
        audit event written by the flusher, so no database write ever holds up accepting."""
        self._close_with(connection, protocol.failure(None, code, message, ExitCode.TEMPFAIL))
        caller = auth.resolve(peer, self.config)
        self.denials.count(caller, CONNECT_ACTION, message, mono=time.monotonic(), at=self.clock())

    @staticmethod
    def _close_with(connection: socket.socket, answer: dict[str, object]) -> None:
        with contextlib.suppress(OSError), connection:
            connection.settimeout(1.0)
            connection.sendall(protocol.encode(answer))

    def _flush_denials(self) -> None:
        while not self.stop_event.wait(DENIAL_FLUSH_TICK_S):
            self._write_denials(self.denials.due(time.monotonic()))
        self._write_denials(self.denials.due(time.monotonic(), everything=True))

    def _write_denials(self, counted: list[Repeated]) -> None:
        for repeated in counted:
            try:
                audit_repeated(self.services, repeated, self.clock())
            except (IngestdError, StoreError) as error:
                failed = {"action": repeated.action, "count": repeated.count, "error": str(error)}
                log.error("control_audit_failed", **failed)  # noqa: TRY400 - the message is the whole story

    def _connection(self, connection: socket.socket, peer: auth.Peer, accepted: float) -> None:
        try:
            with connection:
                self._serve_connection(connection, peer, accepted + self.config.connection_lifetime_seconds)
        except OSError as error:
            log.info("control_client_gone", error=str(error))
        finally:
            self._release_slot(peer.uid)

    def _serve_connection(self, connection: socket.socket, peer: auth.Peer, expires: float) -> None:
        idle_until = time.monotonic() + self.config.timeout_seconds
        caller = auth.resolve(peer, self.config)
        buffer = b""
        fds: list[int] = []  # sent with the bytes of the request being read; closed once it is answered
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                if now >= expires:  # checked before each request too, for a client that pipelines them
                    self._close_with(connection, self._expired())
                    return
                newline = buffer.find(b"\n")
                if newline < 0:
                    if len(buffer) > protocol.MAX_REQUEST_BYTES:
                        self._bad_request(
                            connection, f"request is larger than {protocol.MAX_REQUEST_BYTES} bytes"
                        )
                        return
                    if now >= idle_until:
                        return
                    connection.settimeout(min(idle_until - now, expires - now, ACCEPT_TICK_S * 4))
                    try:
                        chunk, truncated = protocol.receive(connection, 65536, fds, MAX_PASSED_FDS)
                    except TimeoutError:
                        continue
                    if truncated:
                        self._bad_request(
                            connection, f"a request may hand over at most {MAX_PASSED_FDS} file"
                        )
                        return
                    if not chunk:
                        return  # the client closed; a partial line is dropped
                    buffer += chunk
                    continue
                line, buffer = buffer[:newline], buffer[newline + 1 :]
                if not line.strip():
                    continue
                self._send(connection, self._answer(caller, line, tuple(fds)))
                _close_all(fds)
                idle_until = time.monotonic() + self.config.timeout_seconds
        finally:
            _close_all(fds)

    def _expired(self) -> dict[str, object]:
        lifetime = self.config.connection_lifetime_seconds
        message = f"connection closed: open longer than {lifetime:g}s; reconnect"
        return protocol.failure(None, protocol.CONNECTION_EXPIRED, message, ExitCode.TEMPFAIL)

    def _bad_request(self, connection: socket.socket, detail: str) -> None:
        self._send(
            connection,
            protocol.failure(None, protocol.BAD_REQUEST, f"control protocol: {detail}", ExitCode.PROTOCOL),
        )

    def _answer(self, caller: auth.Caller, line: bytes, fds: tuple[int, ...]) -> dict[str, object]:
        try:
            message = protocol.parse_request(line)
        except protocol.WireProtocolError as error:
            return protocol.failure(
                protocol.request_id_of(line), protocol.BAD_REQUEST, str(error), error.exit_code
            )
        return dispatch(
            self.services,
            caller,
            dataclasses.replace(message, fds=fds),
            self.clock(),
            denials=self.denials,
            mono=time.monotonic(),
            clock=self.clock,
        )

    def _send(self, connection: socket.socket, response: dict[str, object]) -> None:
        connection.settimeout(self.config.timeout_seconds)
        passed = protocol.passed_file(response)
        if passed is None:
            connection.sendall(protocol.encode(response))
            return
        with passed.file:  # our copy is closed whether or not the caller got theirs
            line = protocol.encode(response)
            sent = socket.send_fds(connection, [line], [passed.file.fileno()])
            connection.sendall(line[sent:])  # the descriptor went with the first bytes

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._flusher is not None:
            self._flusher.join(timeout)  # writes what is still counted
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with contextlib.suppress(OSError):
            # Only our own socket: a newer daemon may have replaced it.
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()
