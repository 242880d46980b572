"""The flag service on each catalog backend: each decision raised once, each new flag announced once,
after its transaction committed."""

from __future__ import annotations

import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from ingestd.config import NotifyConfig
from ingestd.flagging import FlagService, run_notify
from ingestd.operations import FlagView
from ingestd.policies.flags import DEDUP_KEY_MAX, FlagDecision
from store.catalog import Catalog
from store.models import Flag, FlagKind, FlagStatus
from tests.support.notify import notified, notify_command

NOW = datetime(2026, 5, 11, 0, 30, tzinfo=UTC)
SILENT = FlagService(NotifyConfig())


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
    with catalog.transaction() as session:
        flags = session.scalars(select(Flag).order_by(Flag.id)).all()
        assert [flag.details["file"] for flag in flags] == keys  # the whole path is kept in the details
        assert all(len(flag.dedup_key) == DEDUP_KEY_MAX for flag in flags)
        assert all(flag.dedup_key.startswith("rejected:1:DCIM/录像-00/") for flag in flags)


def test_a_long_key_a_sqlite_catalog_kept_whole_before_keys_were_bounded_still_dedups(
    sqlite_catalog: Catalog,
) -> None:
    key = "rejected:1:DCIM/" + "deep/" * 80 + "fifo.MP4"
    with sqlite_catalog.transaction() as session:
        session.add(
            Flag(kind=FlagKind.FAILED_FILE, status=FlagStatus.OPEN, dedup_key=key, raised_at=NOW, details={})
        )
    with SILENT.transaction(sqlite_catalog) as batch:
        assert batch.raise_flags([failed_file(key)]) == []
        assert batch.session.scalars(select(Flag.dedup_key)).all() == [key]


def test_a_new_flag_is_announced_once_after_commit_and_a_rolled_back_one_never(
    catalog: Catalog, tmp_path: Path
) -> None:
    command, out = notify_command(tmp_path)
    service = FlagService(NotifyConfig(command=command))
    late = FlagDecision(FlagKind.LATE, "late:r1", NOW, camera_serial="ZFY0001", details={"lateness_s": 60.0})
    with capture_logs() as logs:
        with pytest.raises(RuntimeError), service.transaction(catalog) as batch:
            batch.raise_flags([FlagDecision(FlagKind.LATE, "late:r2", NOW)])
            raise RuntimeError("the rest of the transaction failed")
        with service.transaction(catalog) as batch:
            (flag,) = batch.raise_flags([late])
            assert notified(out) == []  # not before the commit
        assert service.raise_now(catalog, [late]) == []  # raised already: nothing new, nothing announced
    with catalog.transaction() as session:
        assert session.scalars(select(Flag.dedup_key)).all() == ["late:r1"]
    assert [(p["id"], p["kind"], p["device_serial"], p["details"]) for p in notified(out)] == [
        (flag.id, "late", "ZFY0001", {"lateness_s": 60.0})
    ]
    raised = [e for e in logs if e["event"] == "flag_raised"]
    assert [(e["flag_id"], e["kind"], e["device_id"], e["dedup_key"]) for e in raised] == [
        (flag.id, "late", "ZFY0001", "late:r1")
    ]


def test_a_failing_or_hanging_notify_command_is_logged_and_never_raises(tmp_path: Path) -> None:
    flag = FlagView(
        id=7,
        kind="overdue",
        status="open",
        raised_at=NOW,
        device_serial="ZFY0001",
        recording_id=None,
        dock_session_id=None,
        dedup_key="overdue:ZFY0001:x",
        details={},
        explanation=None,
        explained_by=None,
        explained_at=None,
    )
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
