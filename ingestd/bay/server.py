"""Serves the bay display over HTTP with live updates as server-sent events.

Guarantees: off unless `[bay_display] enabled`; a loopback address unless `allow_remote`. Read-only: GET
of the page, its two assets and `/events`; nothing else. One poller thread reads the catalog about once a
second while a screen watches (never the sessions' memory), so a slow or hostile browser cannot slow the
supervisor or a copy. At most `max_clients` live streams and a fixed number of connections; a stream ends
when its client goes away (a write fails or stays unacknowledged), when it has run `STREAM_MAX_S` (the
browser reconnects), or at stop. A Host header that is a DNS name other than localhost is refused (DNS
rebinding).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import structlog

from ingestd.bay.tiles import bays
from ingestd.config import BayDisplayConfig, short_port_name
from ingestd.errors import IngestdError
from ingestd.exit_codes import ExitCode
from store.catalog import Catalog

log = structlog.get_logger()

POLL_S = 1.0
KEEPALIVE_S = 15.0  # a comment line this often: a client that went away is noticed at the next write
STREAM_MAX_S = 600.0  # then the stream ends and the browser's EventSource reconnects
SOCKET_TIMEOUT_S = 10.0  # a read or a write that waits this long ends the connection
UNACKED_MS = 30_000  # TCP_USER_TIMEOUT: sent data unacknowledged this long ends the connection
SPARE_CONNECTIONS = 16  # beyond the live streams: page and asset requests in flight
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/bay.css": ("bay.css", "text/css; charset=utf-8"),
    "/bay.js": ("bay.js", "text/javascript; charset=utf-8"),
}
HEADERS = {
    # Nothing inline and nothing from elsewhere: a name that slipped past the escaping cannot run.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def host_allowed(host_header: str | None) -> bool:
    """An IP literal or localhost, with or without a port: a rebound DNS name is refused."""
    if not host_header:
        return False
    host = host_header.strip()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class BayDisplayError(IngestdError):
    wire_code = "bay-display"
    """The bay display cannot listen where it is configured to (the address is taken, or not this host's)."""

    template = "bay_display.listen {listen}: cannot listen: {detail}"
    exit_code = ExitCode.OS_ERROR  # as any socket the daemon cannot open


class _Server(ThreadingHTTPServer):
    """A thread per connection, up to `limit` at once; a connection beyond that is closed unanswered."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], limit: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._connections = threading.BoundedSemaphore(limit)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._connections.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._connections.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()


class BayDisplay:
    def __init__(
        self,
        catalog: Catalog,
        config: BayDisplayConfig,
        *,
        dock_label: Callable[[str], str] = short_port_name,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        self.catalog = catalog
        self.config = config
        self.dock_label = dock_label
        self.keepalive_s = keepalive_s
        self.stop_event = threading.Event()
        self._changed = threading.Condition()
        self._version = 0
        self._snapshot = json.dumps({"tiles": [], "at": None})
        self._streams = 0
        self.assets: dict[str, bytes] = {}
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    @property
    def streams(self) -> int:
        """Live event streams now open."""
        with self._changed:
            return self._streams

    @property
    def port(self) -> int:
        """The port it listens on."""
        if self._server is None:
            raise RuntimeError("the bay display is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        static = resources.files("ingestd.bay") / "static"
        self.assets = {path: (static / name).read_bytes() for path, (name, _) in ASSETS.items()}
        try:
            self._server = _Server(
                self.config.address(), _handler(self), self.config.max_clients + SPARE_CONNECTIONS
            )
        except OSError as error:
            raise BayDisplayError(listen=self.config.listen, detail=error.strerror or str(error)) from None
        self._threads = [
            threading.Thread(target=self._poll, name="bay-display-poll", daemon=True),
            threading.Thread(target=self._server.serve_forever, args=(0.5,), name="bay-display", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        log.info("bay_display_listening", listen=self.config.listen, max_clients=self.config.max_clients)

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        with self._changed:
            self._changed.notify_all()
        if self._server is not None:
            self._server.shutdown()
            with contextlib.suppress(OSError):
                self._server.server_close()
        for thread in self._threads:
            thread.join(timeout)
        deadline = time.monotonic() + timeout
        with self._changed:  # the streams wake on the notify above and leave
            while self._streams and time.monotonic() < deadline:
                self._changed.wait(0.1)

    # -- the snapshot ----------------------------------------------------------------------------

    def _poll(self) -> None:
        # Only while a screen watches: the catalog is not read for nobody.
        while not self.stop_event.wait(POLL_S):
            if self.streams:
                self._refresh()

    def _refresh(self) -> None:
        try:
            with self.catalog.transaction() as db:
                tiles = bays(db, self.dock_label)
        except Exception:  # the display must never take the daemon down; the failure is logged
            log.exception("bay_display_read_failed")
            return
        text = json.dumps({"tiles": tiles, "at": datetime.now(UTC).isoformat()}, ensure_ascii=True)
        with self._changed:
            if text != self._snapshot:
                self._snapshot = text
                self._version += 1
                self._changed.notify_all()

    def _next(self, seen: int, wait: float) -> tuple[int, str]:
        """The snapshot once its version differs from `seen`, or the same after `wait` s or at stop."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen or self.stop_event.is_set(), wait)
            return self._version, self._snapshot

    def admit(self) -> bool:
        with self._changed:
            if self._streams >= self.config.max_clients or self.stop_event.is_set():
                return False
            self._streams += 1
            return True

    def leave(self) -> None:
        with self._changed:
            self._streams -= 1
            self._changed.notify_all()

    def stream(self, write: Any) -> None:
        """Send snapshots with `write` until the client goes, the stream's time is up, or stop."""
        write(b"retry: 2000\n\n")
        self._refresh()  # the snapshot may be old if no screen was watching
        seen = -1
        ends = time.monotonic() + STREAM_MAX_S
        while not self.stop_event.is_set() and time.monotonic() < ends:
            version, text = self._next(seen, self.keepalive_s)
            if self.stop_event.is_set():
                return
            write(f"data: {text}\n\n".encode() if version != seen else b": keepalive\n\n")
            seen = version


def _handler(display: BayDisplay) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = SOCKET_TIMEOUT_S
        server_version = "ingestd-bay"
        sys_version = ""

        def setup(self) -> None:
            super().setup()
            if hasattr(socket, "TCP_USER_TIMEOUT"):
                with contextlib.suppress(OSError):
                    self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, UNACKED_MS)

        def do_GET(self) -> None:
            if not host_allowed(self.headers.get("Host")):
                self.send_error(421, "use the station's address, not a DNS name")
                return
            path = self.path.split("?", 1)[0]
            if path == "/events":
                self._events()
                return
            if path not in ASSETS:
                self.send_error(404, "not here: the bay display has only its page")
                return
            body = display.assets[path]
            self.send_response(200)
            self._common_headers(ASSETS[path][1])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _events(self) -> None:
            if not display.admit():
                self.send_error(503, "too many bay screens are watching; try again later")
                return
            try:
                self.send_response(200)
                self._common_headers("text/event-stream; charset=utf-8")
                self.end_headers()

                def write(chunk: bytes) -> None:
                    self.wfile.write(chunk)
                    self.wfile.flush()

                display.stream(write)
            except OSError:
                pass  # the screen went away (reset, broken pipe or an unacknowledged write)
            finally:
                display.leave()
                self.close_connection = True

        def _common_headers(self, content_type: str) -> None:
            self.send_header("Content-Type", content_type)
            for name, value in HEADERS.items():
                self.send_header(name, value)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's signature
            return  # a kiosk reconnecting all day would drown the journal

    return Handler
