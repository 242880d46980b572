"""`ingestd run`: take the station's lock, reconcile, report READY, then supervise sources, sessions
and the watchdog. One daemon per state directory: a second refuses before it opens anything else.

The supervising loop is the only place that pings the systemd watchdog, so a stuck loop stops the pings
and systemd restarts the daemon. Every service thread has a stop event. SIGTERM lets each session finish
its current durable step; SIGHUP reloads the camera rules.
"""

from __future__ import annotations

import fcntl
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType

import structlog

from ingestd.bay.server import BayDisplay
from ingestd.config import Config, check_for_run, load_config
from ingestd.control.metrics import MetricsServer
from ingestd.control.server import ControlServer
from ingestd.docking.events import DockEvent
from ingestd.docking.folders import FolderSource
from ingestd.docking.source import DeviceSource
from ingestd.errors import IngestdError
from ingestd.exit_codes import ExitCode
from ingestd.jobs import JobRunner
from ingestd.manager import DockManager, interrupted_sessions
from ingestd.partials import expire_partial_copies
from ingestd.replicator import Replicator
from ingestd.sdnotify import Notifier, watchdog_interval_s
from ingestd.services import MIB, Services
from ingestd.session import IngestSettings, SessionSummary
from store.models import SessionState
from store.types import utcnow
from store.vault import Vault

log = structlog.get_logger()

LOOP_TICK_S = 0.25
PROGRESS_INTERVAL_S = 1.0
LOCK_FILE = "ingestd.lock"
SOURCE_STOP_TIMEOUT_S = 5.0


class AlreadyRunningError(IngestdError):
    template = "ingestd is already running on {state_dir} (pid {pid}); refusing to start a second one"
    exit_code = ExitCode.ALREADY_RUNNING
    wire_code = "already-running"


def lock_state(state_dir: Path) -> int:
    """Take the station's single-instance lock (an exclusive flock on `state_dir/ingestd.lock`) and
    return its descriptor, held open for the life of the process: the kernel drops it at exit, even on
    SIGKILL, so a crash leaves nothing stale. Raises AlreadyRunningError, naming the holder's pid, while
    another daemon holds it."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyRunningError(state_dir=state_dir, pid=holder) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message above; the lock is the flock
    return fd


def ingest_settings(config: Config) -> IngestSettings:
    return IngestSettings(
        clock_samples=config.ingest.clock_samples,
        delete_after_ingest=config.ingest.delete_after_ingest,
        deadline_window=config.deadlines.window,
        storage_wait_s=config.detection.storage_wait_seconds,
        reenumerate_s=config.detection.reenumerate_seconds,
    )


@dataclass
class DaemonState:
    """Signal handlers only set flags; the loop acts on them."""

    stop: threading.Event = field(default_factory=threading.Event)
    reload: threading.Event = field(default_factory=threading.Event)


def reconcile(services: Services, now: datetime) -> str:
    """Repair what a crash left behind, before READY: open sessions, orphaned partial copies."""
    closed = interrupted_sessions(services, now)
    # Keyed partials are kept: the camera's next dock resumes them. Unkeyed temp files are removed.
    partials = services.store.reconcile(keep=lambda _key: True)
    # ...unless no dock resumed them within ingest.partial_max_age_hours (also an hourly job). A partial
    # the disk will not let go of is worth a log line, not a station that refuses every camera.
    try:
        expired = expire_partial_copies(services, now)
    except OSError as error:
        log.error("partial_expiry_failed", error=str(error))  # noqa: TRY400 - the message is the whole story
        expired = []
    # A crash between a commit and its anchor is covered here, before anything new is appended.
    services.audit.anchor(services.catalog)
    kept = len(partials.kept_keys) - len(expired)
    message = (
        f"reconciled: {closed} interrupted session(s), {kept} partial copy(ies) kept for resume, "
        f"{len(expired)} expired, {len(partials.removed_paths)} temp file(s) removed"
    )
    log.info(
        "reconciled",
        interrupted_sessions=closed,
        partials_kept=kept,
        partials_expired=len(expired),
        temp_files_removed=len(partials.removed_paths),
    )
    return message


class Daemon:
    def __init__(
        self, config: Config, config_path: Path | None, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        # First of all: a second daemon must not reconcile (interrupt) the live one's sessions.
        self._lock_fd = lock_state(config.daemon.state_dir)
        self.config = config
        self.config_path = config_path
        self.clock = clock
        self.state = DaemonState()
        self.notifier = Notifier()
        self.events: queue.Queue[DockEvent] = queue.Queue()
        self.services = Services.open(config)
        self.manager = DockManager(
            self.services,
            ingest_settings(config),
            max_concurrent=config.ingest.max_concurrent,
            clock=clock,
            on_summary=self._session_ended,
            slow_rate_floor_bps=config.ingest.slow_rate_floor_mib_s * MIB,
            slow_rate_seconds=config.ingest.slow_rate_seconds,
        )
        self._sources: list[DeviceSource] = []
        self._alarm_lock = threading.Lock()
        self._store_full: dict[str, str] = {}
        self.jobs = JobRunner(self.services, clock=clock)
        self.control = ControlServer(self.services, config.control, clock=clock)
        self.metrics = (
            MetricsServer(self.services, config.metrics, clock=clock) if config.metrics.enabled else None
        )
        # Reads the vault secret now, so a bad secret file refuses the start (78), never the first upload.
        self.replicator = (
            Replicator(
                self.services,
                Vault(config.vault.settings(config_path or "(built-in defaults)")),
                clock=clock,
                ingest_busy=lambda: bool(self.manager.active_ports()),
            )
            if config.vault.enabled
            else None
        )
        self.bay_display = (
            BayDisplay(self.services.catalog, config.bay_display, dock_label=self.services.config.dock_label)
            if config.bay_display.enabled
            else None
        )

    def install_signal_handlers(self) -> None:
        def on_term(_signum: int, _frame: FrameType | None) -> None:
            self.state.stop.set()

        def on_hup(_signum: int, _frame: FrameType | None) -> None:
            self.state.reload.set()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)

    def start_sources(self) -> None:
        detection = self.config.detection
        udev: dict[str, str] | None = None
        if detection.udev:
            # pyudev needs libudev: load on use.
            from ingestd.docking.udev import UdevSource, choose_source  # noqa: PLC0415

            source, why = choose_source(detection.udev_source)
            udev = {"setting": detection.udev_source, "source": source, "why": why}
            log.info("udev_source", **udev)
            self._sources.append(
                UdevSource(
                    self.events.put,
                    source=source,
                    settle_s=detection.settle_seconds,
                    grouping=detection.usb_grouping,
                    ready=lambda device: self.services.registry.ready(device),  # noqa: PLW0108 - late-bound: a reload replaces the registry
                )
            )
        self.services.detection = {"udev": udev, "watch_folders": [str(f) for f in detection.watch_folders]}
        if detection.watch_folders:
            folders = list(detection.watch_folders)
            self._sources.append(
                FolderSource(
                    folders,
                    self.events.put,
                    settle_s=detection.settle_seconds,
                    ready=lambda device: self.services.registry.ready(device),  # noqa: PLW0108 - late-bound
                )
            )
        for device_source in self._sources:
            device_source.start()

    def run(self) -> int:
        message = reconcile(self.services, self.clock())
        # Before READY: READY means ingestctl can talk to us.
        self.control.start()
        if self.metrics is not None:
            self.metrics.start()
        if self.bay_display is not None:
            self.bay_display.start()
        self.start_sources()
        self.jobs.start()
        if self.replicator is not None:
            self.replicator.start()
        self.notifier.ready(message)
        log.info("ready", docks_watched=self._describe_sources())
        watchdog_every = watchdog_interval_s()
        last_watchdog = last_progress = 0.0
        last_status = message
        try:
            while not self.state.stop.is_set():
                self._drain_events()
                self.manager.reap()
                now = time.monotonic()
                if now - last_progress >= PROGRESS_INTERVAL_S:
                    last_progress = now
                    self.manager.flush_progress()
                    self.manager.release_slow_slots(now)
                    # Only a change: the manager keeps the last STATUS, and a datagram each second to a
                    # listener that reads none fills its queue and would block this loop.
                    status = self._status_line()
                    if status != last_status:
                        last_status = status
                        self.notifier.status(status)
                if watchdog_every is not None and now - last_watchdog >= watchdog_every:
                    last_watchdog = now
                    self.notifier.watchdog()
                if self.state.reload.is_set():
                    self.state.reload.clear()
                    self._reload()
        finally:
            self.shutdown()
        return 0

    def _drain_events(self) -> None:
        try:
            event = self.events.get(timeout=LOOP_TICK_S)
        except queue.Empty:
            return
        self.manager.handle(event)

    def _session_ended(self, summary: SessionSummary) -> None:
        """Called from session threads. A full store raises an alarm that stays in STATUS until the
        camera that hit it has its footage stored."""
        with self._alarm_lock:
            if summary.reason is not None and summary.reason.startswith("store full"):
                self._store_full[summary.device_id or summary.port] = summary.reason
            elif summary.state is SessionState.DONE:
                self._store_full.pop(summary.device_id or summary.port, None)
        self.jobs.session_ended()  # gap and drift checks now, not at the next interval

    def _status_line(self) -> str:
        active = self.manager.active_ports()
        line = f"{len(active)} dock(s) active" if active else "idle, waiting for cameras"
        with self._alarm_lock:
            if self._store_full:
                cameras = ", ".join(sorted(self._store_full))
                line = f"ALARM store full ({self.services.store.free_bytes()} bytes free; {cameras}); {line}"
        return line

    def _describe_sources(self) -> list[str]:
        detection = self.services.detection or {}
        udev = detection.get("udev")
        described = [f"udev:{udev['source']}"] if udev else []
        return described + [f"folder:{folder}" for folder in detection.get("watch_folders", [])]

    def _reload(self) -> None:
        try:
            fresh = load_config(self.config_path)
            check_for_run(fresh, self.config_path)  # an unknown driver, too
            rules = fresh.camera_rules()  # reads the password files: a bad one refuses the reload
        except IngestdError as error:
            log.error("reload_refused", error=str(error))  # noqa: TRY400 - the message is the whole story
            return
        if (fresh.catalog, fresh.store, fresh.daemon) != (
            self.config.catalog,
            self.config.store,
            self.config.daemon,
        ):
            log.warning("reload_partial", detail="catalog, store and daemon settings need a restart")
        from drivers.registry import DriverRegistry  # noqa: PLC0415 - only needed on reload

        self.services.registry = DriverRegistry(rules)
        self.manager.settings = ingest_settings(fresh)
        self.services.flag_notifier.notify = fresh.notify
        self.config = fresh
        log.info("reloaded", camera_rules=len(fresh.camera))

    def shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping", active=self.manager.active_ports())
        self.control.stop()
        if self.metrics is not None:
            self.metrics.stop()
        if self.bay_display is not None:
            self.bay_display.stop()
        for device_source in self._sources:
            device_source.stop()
        for device_source in self._sources:
            device_source.join(timeout=SOURCE_STOP_TIMEOUT_S)
        self.manager.stop(timeout=self.config.ingest.stop_timeout_seconds)
        self.manager.flush_progress()
        if self.replicator is not None:
            self.replicator.stop(timeout=self.config.ingest.stop_timeout_seconds)
        self.jobs.stop()
        self.services.audit.checkpoint(self.services.catalog)
        self.services.close()
        os.close(self._lock_fd)  # last: nothing of this station is open any more
        log.info("stopped")
