"""The one path by which a flag is raised, for the ingest session and the scheduled jobs alike.

Guarantees:
- each decision is raised once: a key the catalog holds already (or another process inserts a moment
  earlier) raises nothing, and does not fail the rest of the transaction;
- each flag that is new is announced, a `flag_raised` log line and the `[notify] command`, once, and only
  after its transaction committed: a rolled-back flag is never announced;
- the command runs on the notifier's own thread, so a slow one delays no ingest and no job; a notify
  command that fails or hangs is logged and killed, and never fails the caller.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import structlog
from sqlalchemy import exc, select
from sqlalchemy.orm import Session

from ingestd.config import NotifyConfig
from ingestd.operations import FlagView, flag_view
from ingestd.policies.flags import FlagDecision, bounded_dedup_key
from store.catalog import Catalog
from store.models import Flag

log = structlog.get_logger(__name__)


@dataclass
class FlagBatch:
    """The flags raised in one open catalog transaction; see `FlagService.transaction`."""

    db: Session
    raised: list[FlagView] = field(default_factory=list)

    def raise_flags(
        self, decisions: Iterable[FlagDecision], *, dock_session_id: int | None = None
    ) -> list[FlagView]:
        """Raise each decision once; returns the flags that are new (announced when the batch commits)."""
        fresh = [
            flag_view(flag, decision.camera_serial)
            for decision in decisions
            if (flag := _insert(self.db, decision, dock_session_id)) is not None
        ]
        self.raised += fresh
        return fresh


def _insert(db: Session, decision: FlagDecision, dock_session_id: int | None) -> Flag | None:
    """The new flag, or None when its key is taken. A key longer than the catalog column (a deep path on
    a camera) is stored in its bounded form."""
    bounded = bounded_dedup_key(decision.dedup_key)
    # A SQLite catalog from before keys were bounded may hold a long key as it was.
    if db.scalar(select(Flag.id).where(Flag.dedup_key.in_({decision.dedup_key, bounded}))) is not None:
        return None
    flag = Flag(
        kind=decision.kind,
        dedup_key=bounded,
        raised_at=decision.raised_at,
        details=dict(decision.details),
        camera_id=decision.camera_id,
        recording_id=decision.recording_id,
        dock_session_id=dock_session_id,
    )
    try:
        # A savepoint: a flag another process raised a moment ago is skipped, the transaction goes on.
        with db.begin_nested():
            db.add(flag)
            db.flush()
    except exc.IntegrityError:
        # Only a lost race on the unique key is expected; anything else is re-raised.
        if db.scalar(select(Flag.id).where(Flag.dedup_key == bounded)) is None:
            raise
        return None
    return flag


NOTIFY_QUEUE_MAX = 1000  # flags waiting for the command; beyond, a notification is dropped (logged)
NOTIFY_DRAIN_S = 10.0  # at stop, how long queued notifications may still run
_SLICE_S = 0.1  # how often a running command checks whether the drain time is up
_IDLE_S = 0.5  # how often the idle thread checks for stop


class FlagNotifier:
    """Runs the `[notify] command` for each new flag, one at a time, on a thread of its own (started on
    the first flag), so a slow command delays no ingest, no job and no stop.

    Bounded both ways: a full queue drops the notification, and `stop` lets queued ones run for at most
    `drain_s` seconds, then kills the running command and drops the rest. A dropped notification is
    logged as `notify_dropped` with the flag id; the flag itself is in the catalog."""

    def __init__(
        self, notify: NotifyConfig, *, queue_max: int = NOTIFY_QUEUE_MAX, drain_s: float = NOTIFY_DRAIN_S
    ) -> None:
        self.notify = notify  # replaced on reload; each command run reads it afresh
        self.drain_s = drain_s
        self.stop_event = threading.Event()
        self._cut = threading.Event()  # the drain time is up
        self._queue: queue.Queue[FlagView] = queue.Queue(maxsize=queue_max)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, flag: FlagView) -> None:
        """Queue `flag` for the command (none configured: nothing to do); never blocks."""
        if not self.notify.argv():
            return
        with self._lock:
            if self.stop_event.is_set():
                _dropped(flag, "stopping")
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="notifier", daemon=True)
                self._thread.start()
            try:
                self._queue.put_nowait(flag)
            except queue.Full:
                _dropped(flag, "queue full")

    def _run(self) -> None:
        while True:
            try:
                flag = self._queue.get(timeout=_IDLE_S)
            except queue.Empty:
                if self.stop_event.is_set():
                    return
                continue
            if self._cut.is_set():
                _dropped(flag, "stopping")
                continue
            try:
                run_notify(flag, self.notify, cut=self._cut)
            except Exception:  # one flag's notification must not end the notifier for the rest
                log.exception("notify_failed", flag_id=flag.id)

    def stop(self) -> None:
        """Take no more flags; let the queued ones run for up to `drain_s` seconds, then give up on the
        rest. Returns once the thread has ended."""
        with self._lock:
            self.stop_event.set()
            thread = self._thread
        if thread is None:
            return
        thread.join(self.drain_s)
        self._cut.set()
        thread.join()  # short now: the running command is killed, the rest only logged


def _dropped(flag: FlagView, reason: str) -> None:
    log.warning("notify_dropped", flag_id=flag.id, kind=flag.kind, reason=reason)


class FlagService:
    """Raises flag decisions and announces the new flags."""

    def __init__(self, notifier: FlagNotifier) -> None:
        self.notifier = notifier

    @contextmanager
    def transaction(self, catalog: Catalog) -> Iterator[FlagBatch]:
        """A catalog transaction to raise flags in (`batch.db` for the rest of its work); the new
        flags are announced once it has committed."""
        with catalog.transaction() as db:
            batch = FlagBatch(db)
            yield batch
        self.announce(batch.raised)

    def raise_now(
        self, catalog: Catalog, decisions: Iterable[FlagDecision], *, dock_session_id: int | None = None
    ) -> list[FlagView]:
        """Raise `decisions` in a transaction of their own and announce the new flags."""
        with self.transaction(catalog) as batch:
            return batch.raise_flags(decisions, dock_session_id=dock_session_id)

    def announce(self, flags: Iterable[FlagView]) -> None:
        for flag in flags:
            log.info(
                "flag_raised",
                flag_id=flag.id,
                kind=flag.kind,
                device_id=flag.device_serial,
                recording_id=flag.recording_id,
                dedup_key=flag.dedup_key,
            )
            self.notifier.submit(flag)


def run_notify(flag: FlagView, notify: NotifyConfig, *, cut: threading.Event | None = None) -> bool:
    """Run the notify command with the flag as JSON on stdin; True when it exited 0 in time.

    The command runs in its own process group so a timeout, or `cut` being set (the notifier's drain
    time is up), kills whatever it started too."""
    argv = notify.argv()
    if not argv:
        return False
    payload = json.dumps(flag.as_json(), ensure_ascii=False).encode("utf-8")
    bound = log.bind(flag_id=flag.id, command=argv[0])
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as error:
        bound.warning("notify_failed", error=str(error))
        return False
    give_up = time.monotonic() + notify.timeout_seconds
    send: bytes | None = payload
    with process:
        while True:
            try:
                # Called again after a timeout, communicate() resumes where it was (input given once).
                _out, err = process.communicate(send, timeout=min(_SLICE_S, give_up - time.monotonic()))
                break
            except subprocess.TimeoutExpired:
                send = None
                cut_short = cut is not None and cut.is_set()
                if not cut_short and time.monotonic() < give_up:
                    continue
                with contextlib.suppress(ProcessLookupError):  # it ended just now
                    os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                if cut_short:
                    _dropped(flag, "stopping")
                else:
                    bound.warning("notify_timeout", timeout_s=notify.timeout_seconds)
                return False
    if process.returncode != 0:
        stderr = err.decode("utf-8", "replace")[-500:].strip()
        bound.warning("notify_failed", returncode=process.returncode, stderr=stderr)
        return False
    return True
