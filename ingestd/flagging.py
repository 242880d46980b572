"""The one path by which a flag is raised, for the ingest session and the scheduled jobs alike.

Guarantees:
- each decision is raised once: a key the catalog holds already (or another process inserts a moment
  earlier) raises nothing, and does not fail the rest of the transaction;
- each flag that is new is announced, a `flag_raised` log line and the `[notify] command`, once, and only
  after its transaction committed: a rolled-back flag is never announced;
- a notify command that fails or hangs is logged and killed, and never fails the caller.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
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

    session: Session
    raised: list[FlagView] = field(default_factory=list)

    def raise_flags(
        self, decisions: Iterable[FlagDecision], *, dock_session_id: int | None = None
    ) -> list[FlagView]:
        """Raise each decision once; returns the flags that are new (announced when the batch commits)."""
        fresh = [
            flag_view(flag, decision.camera_serial)
            for decision in decisions
            if (flag := _insert(self.session, decision, dock_session_id)) is not None
        ]
        self.raised += fresh
        return fresh


def _insert(session: Session, decision: FlagDecision, dock_session_id: int | None) -> Flag | None:
    """The new flag, or None when its key is taken. A key longer than the catalog column (a deep path on
    a camera) is stored in its bounded form."""
    bounded = bounded_dedup_key(decision.dedup_key)
    # A SQLite catalog from before keys were bounded may hold a long key as it was.
    if session.scalar(select(Flag.id).where(Flag.dedup_key.in_({decision.dedup_key, bounded}))) is not None:
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
        with session.begin_nested():
            session.add(flag)
            session.flush()
    except exc.IntegrityError:
        # Only a lost race on the unique key is expected; anything else is re-raised.
        if session.scalar(select(Flag.id).where(Flag.dedup_key == bounded)) is None:
            raise
        return None
    return flag


class FlagService:
    """Raises flag decisions and announces the new flags."""

    def __init__(self, notify: NotifyConfig) -> None:
        self.notify = notify

    @contextmanager
    def transaction(self, catalog: Catalog) -> Iterator[FlagBatch]:
        """A catalog transaction to raise flags in (`batch.session` for the rest of its work); the new
        flags are announced once it has committed."""
        with catalog.transaction() as session:
            batch = FlagBatch(session)
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
            run_notify(flag, self.notify)


def run_notify(flag: FlagView, notify: NotifyConfig) -> bool:
    """Run the notify command with the flag as JSON on stdin; True when it exited 0 in time.

    The command runs in its own process group so a timeout kills whatever it started too."""
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
    with process:
        try:
            _out, err = process.communicate(payload, timeout=notify.timeout_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            bound.warning("notify_timeout", timeout_s=notify.timeout_seconds)
            return False
    if process.returncode != 0:
        stderr = err.decode("utf-8", "replace")[-500:].strip()
        bound.warning("notify_failed", returncode=process.returncode, stderr=stderr)
        return False
    return True
