"""The flag service on each catalog backend: each decision raised once, each new flag announced once,
after its transaction committed."""

from __future__ import annotations

import os
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from ingestd.config import NotifyConfig
from ingestd.flagging import FlagNotifier, FlagService, run_notify
from ingestd.operations import FlagView
from ingestd.policies.flags import DEDUP_KEY_MAX, FlagDecision
from store.catalog import Catalog
from store.models import Flag, FlagKind, FlagStatus
from tests.support.notify import notified, notify_command
from tests.system.harness import wait_for

NOW = datetime(2026, 5, 11, 0, 30, tzinfo=UTC)
SILENT = FlagService(FlagNotifier(NotifyConfig()))


def failed_file(key: str) -> FlagDecision:
    return FlagDecision(FlagKind.FAILED_FILE, key, NOW, details={"file": key})


def test_a_flag_key_longer_than_its_column_is_raised_once_and_kept_apart_from_its_neighbours(
    catalog: Catalog,
) -> None:
    # A camera path nested far deeper than the column is wide, in characters (PostgreSQL counts those).
    deep = "rejected:1:DCIM/" + "/".join(f"录像-{level:02d}" for level in range(80))
    keys = [deep + "/fifo.MP4", deep + "/fifo2.MP4"]  # same first 255 characters
    with SILENT.transaction(catalog) as batch:
        raised = batch.raise_flags(failed_file(key) for key in keys)
        again = batch.raise_flags([failed_file(keys[0])])
    assert len(raised) == 2
    assert again == []
    with catalog.transaction() as db:
        flags = db.scalars(select(Flag).order_by(Flag.id)).all()
        assert [flag.details["file"] for flag in flags] == keys  # the whole path is kept in the details
        assert all(len(flag.dedup_key) == DEDUP_KEY_MAX for flag in flags)
        assert all(flag.dedup_key.startswith("rejected:1:DCIM/录像-00/") for flag in flags)


def test_a_long_key_a_sqlite_catalog_kept_whole_before_keys_were_bounded_still_dedups(
    sqlite_catalog: Catalog,
) -> None:
    key = "rejected:1:DCIM/" + "deep/" * 80 + "fifo.MP4"
    with sqlite_catalog.transaction() as db:
        db.add(
            Flag(kind=FlagKind.FAILED_FILE, status=FlagStatus.OPEN, dedup_key=key, raised_at=NOW, details={})
        )
    with SILENT.transaction(sqlite_catalog) as batch:
        assert batch.raise_flags([failed_file(key)]) == []
        assert batch.db.scalars(select(Flag.dedup_key)).all() == [key]


def test_a_new_flag_is_announced_once_after_commit_and_a_rolled_back_one_never(
    catalog: Catalog, tmp_path: Path
) -> None:
    command, out = notify_command(tmp_path)
    notifier = FlagNotifier(NotifyConfig(command=command))
    service = FlagService(notifier)
    late = FlagDecision(FlagKind.LATE, "late:r1", NOW, camera_serial="ZFY0001", details={"lateness_s": 60.0})
    with capture_logs() as logs:
        with pytest.raises(RuntimeError), service.transaction(catalog) as batch:
            batch.raise_flags([FlagDecision(FlagKind.LATE, "late:r2", NOW)])
            raise RuntimeError("the rest of the transaction failed")
        with service.transaction(catalog) as batch:
            (flag,) = batch.raise_flags([late])
            assert notified(out) == []  # not before the commit
        assert service.raise_now(catalog, [late]) == []  # raised already: nothing new, nothing announced
        notifier.stop()  # runs what is queued
    with catalog.transaction() as db:
        assert db.scalars(select(Flag.dedup_key)).all() == ["late:r1"]
    assert [(p["id"], p["kind"], p["device_serial"], p["details"]) for p in notified(out)] == [
        (flag.id, "late", "ZFY0001", {"lateness_s": 60.0})
    ]
    raised = [e for e in logs if e["event"] == "flag_raised"]
    assert [(e["flag_id"], e["kind"], e["device_id"], e["dedup_key"]) for e in raised] == [
        (flag.id, "late", "ZFY0001", "late:r1")
    ]


def overdue(flag_id: int) -> FlagView:
    return FlagView(
        id=flag_id,
        kind="overdue",
        status="open",
        raised_at=NOW,
        device_serial="ZFY0001",
        recording_id=None,
        dock_session_id=None,
        dedup_key=f"overdue:ZFY0001:{flag_id}",
        details={},
        explanation=None,
        explained_by=None,
        explained_at=None,
    )


def test_a_failing_or_hanging_notify_command_is_logged_and_never_raises(tmp_path: Path) -> None:
    flag = overdue(7)
    python = shlex.quote(sys.executable)
    with capture_logs() as logs:
        assert run_notify(flag, NotifyConfig(command=f"{python} -c 'import sys; sys.exit(3)'")) is False
        assert run_notify(flag, NotifyConfig(command=str(tmp_path / "absent"))) is False
        hanging = NotifyConfig(command=f"{python} -c 'import time; time.sleep(30)'", timeout_seconds=0.5)
        assert run_notify(flag, hanging) is False
        assert run_notify(flag, NotifyConfig(command="")) is False
    assert [(e["event"], e.get("returncode")) for e in logs] == [
        ("notify_failed", 3),
        ("notify_failed", None),
        ("notify_timeout", None),
    ]


def test_the_notifier_drops_what_it_cannot_hold_and_stops_within_its_drain_time(tmp_path: Path) -> None:
    gate = tmp_path / "gate"  # never opened: the command would wait for its whole 300 s timeout
    command, out = notify_command(tmp_path, gate=gate)
    notifier = FlagNotifier(NotifyConfig(command=command, timeout_seconds=300), queue_max=1, drain_s=0.5)
    waiting = Path(f"{gate}.waiting")
    with capture_logs() as logs:
        notifier.submit(overdue(1))
        pid = int(
            wait_for("the first command to run", lambda: waiting.read_text() if waiting.exists() else None)
        )
        notifier.submit(overdue(2))  # queued behind it
        notifier.submit(overdue(3))  # the queue is full
        notifier.stop()  # returns: the running command is killed, the queued one given up
        notifier.submit(overdue(4))  # too late
    assert [(e["event"], e["flag_id"], e["reason"]) for e in logs if e["event"] == "notify_dropped"] == [
        ("notify_dropped", 3, "queue full"),
        ("notify_dropped", 1, "stopping"),
        ("notify_dropped", 2, "stopping"),
        ("notify_dropped", 4, "stopping"),
    ]
    assert notified(out) == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped, not left behind
