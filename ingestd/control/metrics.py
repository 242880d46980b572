"""Prometheus metrics over HTTP on a loopback address (text exposition format 0.0.4).

Guarantees: off unless `[metrics] enabled`; the schema refuses a non-loopback address. Every figure is
read from the catalog at scrape time, so counters survive restarts and agree with `ingestctl status`.
The server thread has a stop event and answers one scrape at a time (a scrape is a few indexed reads).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ingestd import replication
from ingestd.config import MetricsConfig
from ingestd.control import queries
from ingestd.services import Services
from store.models import DockVisit, FlagKind, SessionState

log = structlog.get_logger()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
POLL_S = 0.5


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self, name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]
    ) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            label_text = ",".join(f'{key}="{_escape(val)}"' for key, val in sorted(labels.items()))
            self.lines.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _ingest_totals(db: Session) -> tuple[int, float]:
    """Bytes copied and seconds spent over every ended dock session (a small table: one row per dock)."""
    total_bytes = db.scalar(select(func.coalesce(func.sum(DockVisit.bytes_done), 0))) or 0
    seconds = 0.0
    for started, ended in db.execute(
        select(DockVisit.started_at, DockVisit.ended_at).where(DockVisit.ended_at.is_not(None))
    ).all():
        seconds += max(0.0, (ended - started).total_seconds())
    return int(total_bytes), seconds


def render(db: Session, *, free_bytes: int | None, now: datetime) -> str:
    exposition = _Exposition()
    docks = queries.docks(db)
    docked = sum(1 for dock in docks if dock["device_serial"] is not None)
    queued = sum(1 for dock in docks if dock["state"] == "queued")
    ingesting = sum(1 for dock in docks if dock["state"] == SessionState.INGESTING.value)
    flags = queries.open_flag_counts(db)
    total_bytes, seconds = _ingest_totals(db)
    verify = queries.last_verify(db)
    exposition.metric("ingestd_up", "gauge", "1 while the daemon serves metrics.", [({}, 1)])
    exposition.metric(
        "ingestd_docked_cameras",
        "gauge",
        "Cameras on a dock now, from docking until taken off (copying, queued, done or failed).",
        [({}, docked)],
    )
    exposition.metric(
        "ingestd_ingesting_cameras",
        "gauge",
        "Cameras copying recordings now (a finished camera left on its dock is not counted).",
        [({}, ingesting)],
    )
    exposition.metric(
        "ingestd_queue_length", "gauge", "Docked cameras waiting for a copy slot.", [({}, queued)]
    )
    exposition.metric(
        "ingestd_ingest_bytes_total",
        "counter",
        "Bytes copied from cameras, all sessions.",
        [({}, total_bytes)],
    )
    exposition.metric(
        "ingestd_ingest_seconds_total", "counter", "Seconds spent in ended dock sessions.", [({}, seconds)]
    )
    exposition.metric(
        "ingestd_open_flags",
        "gauge",
        "Open flags by kind (late: stored after its deadline; overdue: a camera out past the window).",
        [({"kind": kind.value}, flags.get(kind.value, 0)) for kind in FlagKind],
    )
    exposition.metric("ingestd_late_open", "gauge", "Open late flags.", [({}, flags.get("late", 0))])
    exposition.metric("ingestd_overdue_open", "gauge", "Open overdue flags.", [({}, flags.get("overdue", 0))])
    replicas = replication.summary(db, now)
    exposition.metric(
        "ingestd_replication_items",
        "gauge",
        "Objects in the vault replication queue by state.",
        [({"state": state}, count) for state, count in sorted(replicas.counts.items())],
    )
    exposition.metric(
        "ingestd_replication_replicated_bytes",
        "gauge",
        "Bytes of objects replicated and verified in the vault.",
        [({}, replicas.replicated_bytes)],
    )
    exposition.metric(
        "ingestd_replication_bytes_per_second",
        "gauge",
        "Bytes replicated over the last hour, per second.",
        [({}, replicas.recent_bytes_per_s)],
    )
    exposition.metric(
        "ingestd_evicted_objects",
        "gauge",
        "Objects evicted from the local store, held in the vault only.",
        [({}, replicas.evicted_objects)],
    )
    exposition.metric(
        "ingestd_replication_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest object not yet replicated (0 when none).",
        [({}, (now - replicas.oldest_pending_at).total_seconds() if replicas.oldest_pending_at else 0)],
    )
    if free_bytes is not None:
        exposition.metric(
            "ingestd_store_free_bytes", "gauge", "Free bytes on the object store.", [({}, free_bytes)]
        )
    if verify is not None:
        at = datetime.fromisoformat(str(verify["at"]).replace("Z", "+00:00"))
        exposition.metric(
            "ingestd_last_verify_success",
            "gauge",
            "1 when the last `ingestctl verify` found no problem, else 0.",
            [({}, 1 if verify["clean"] else 0)],
        )
        exposition.metric(
            "ingestd_last_verify_timestamp_seconds",
            "gauge",
            "Unix time of the last `ingestctl verify`.",
            [({}, at.timestamp())],
        )
    return exposition.text()


class _HTTPServer6(HTTPServer):
    address_family = socket.AF_INET6


class MetricsServer:
    def __init__(self, services: Services, config: MetricsConfig, *, clock: Callable[[], datetime]) -> None:
        self.services = services
        self.config = config
        self.clock = clock
        self.stop_event = threading.Event()
        self._server: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def scrape(self) -> str:
        try:
            free: int | None = self.services.store.free_bytes()
        except OSError:
            free = None
        with self.services.catalog.transaction() as db:
            return render(db, free_bytes=free, now=self.clock())

    def start(self) -> None:
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is served")
                    return
                try:
                    body = metrics.scrape().encode()
                except Exception:  # a scrape must never take the daemon down; the failure is logged
                    log.exception("metrics_scrape_failed")
                    self.send_error(500, "scrape failed (see the daemon log)")
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's signature
                return  # scrapes every 15 s would drown the journal

        host, port = self.config.address()
        self._server = (_HTTPServer6 if ":" in host else HTTPServer)((host, port), Handler)
        self._server.timeout = POLL_S
        self._thread = threading.Thread(target=self._serve, name="metrics", daemon=True)
        self._thread.start()
        log.info("metrics_listening", listen=self.config.listen)

    def _serve(self) -> None:
        server = self._server
        while server is not None and not self.stop_event.is_set():
            server.handle_request()

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.server_close()
            self._server = None
