"""The scheduled jobs on real catalogs, driven through a real APScheduler with time moved by time-machine."""

from __future__ import annotations

import io
import json
import os
import queue
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest
import time_machine
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED  # type: ignore[import-untyped]
from sqlalchemy import select
from structlog.testing import capture_logs

from drivers.registry import DriverRegistry
from ingestd import operations
from ingestd.config import Config
from ingestd.daemon import reconcile
from ingestd.jobs import JobRunner, evaluate_after_session
from ingestd.partials import expire_partial_copies
from ingestd.services import Services
from store.catalog import Catalog
from store.models import (
    AuditEvent,
    Camera,
    ClockReading,
    CustodyEvent,
    CustodyKind,
    Dock,
    DockVisit,
    Flag,
    Recording,
    SessionState,
)
from store.objects import FileObjectStore, MiB
from tests.support import records as seed
from tests.support.loopdev import ext4_filesystem, require_root_tools
from tests.support.notify import notify_command
from tests.support.objectstore import UnpluggedCamera, unseal_tree
from tests.support.records import CLERK

OUT = datetime(2026, 5, 11, 0, 30, tzinfo=UTC)  # Monday 08:30 Shanghai: the camera leaves the station


def make_services(catalog: Catalog, tmp_path: Path, **sections: dict[str, Any]) -> Services:
    config = Config.model_validate({"daemon": {"state_dir": str(tmp_path / "state")}, **sections})
    return Services(
        config=config,
        catalog=catalog,
        store=FileObjectStore(tmp_path / "store").create_directories(),
        audit=seed.audit_log(tmp_path),
        registry=DriverRegistry([], discover=False),
    )


class Runs:
    """Job executions as the scheduler reports them, in order."""

    def __init__(self, runner: JobRunner) -> None:
        self.events: queue.Queue[Any] = queue.Queue()
        self.seen: dict[str, list[Any]] = {}
        runner.scheduler.add_listener(self.events.put, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)

    def next(self, job_id: str) -> Any:
        """The result of `job_id`'s next run not yet taken (other jobs' runs are kept for later)."""
        while not self.seen.get(job_id):
            event = self.events.get(timeout=20)
            assert event.exception is None, event.traceback
            self.seen.setdefault(event.job_id, []).append(event.retval)
        return self.seen[job_id].pop(0)


@pytest.fixture
def runner_cleanup() -> Iterator[list[JobRunner]]:
    runners: list[JobRunner] = []
    yield runners
    for runner in runners:
        runner.stop()


def test_the_overdue_job_runs_twice_flags_once_and_notifies_the_new_flag(
    catalog: Catalog, tmp_path: Path, runner_cleanup: list[JobRunner]
) -> None:
    command, out = notify_command(tmp_path)
    services = make_services(catalog, tmp_path, notify={"command": command})
    with catalog.transaction() as db:
        officer = seed.officer(db, "000123", "张三")
        seed.camera(db, "ZFY0001", assigned=officer, first_seen_at=OUT)
        seed.camera(db, "ZFY0002", assigned=None, first_seen_at=OUT)
        operations.checkout(db, services.audit, actor=CLERK, now=OUT, device_serial="ZFY0001")
        # ZFY0002 went out too but was docked since: its footage is not at risk.
        operations.checkout(db, services.audit, actor=CLERK, now=OUT, device_serial="ZFY0002")
        docked_since = db.scalars(select(Camera).where(Camera.device_serial == "ZFY0002")).one()
        docked_since.last_docked_at = OUT + timedelta(hours=8)

    with (
        time_machine.travel(OUT + timedelta(hours=23, minutes=50), tick=True) as traveller,
        capture_logs() as logs,
    ):
        runner = JobRunner(services, clock=lambda: datetime.now(UTC))
        runner_cleanup.append(runner)
        runs = Runs(runner)
        runner.start()
        assert runs.next("overdue") == []  # 23 h 50 min out: not yet overdue
        traveller.shift(timedelta(hours=2))  # a missed night of runs is coalesced into one
        runner.scheduler.wakeup()
        (flag,) = runs.next("overdue")
        traveller.shift(timedelta(minutes=15))
        runner.scheduler.wakeup()
        assert runs.next("overdue") == []  # the second run flags nothing again
        runner.stop()
        services.flag_notifier.stop()  # the command runs on the notifier's thread: let it finish

    assert (flag.kind, flag.device_serial, flag.details["checked_out_at"]) == (
        "overdue",
        "ZFY0001",
        OUT.isoformat(),
    )
    assert flag.details["holder_officer_no"] == "000123"
    with catalog.transaction() as db:
        assert [f.dedup_key for f in db.scalars(select(Flag)).all()] == [f"overdue:ZFY0001:{OUT.isoformat()}"]
    notified = sorted(out.iterdir())
    assert [p.name for p in notified] == ["0.json"]
    payload = json.loads(notified[0].read_text(encoding="utf-8"))
    assert (payload["id"], payload["kind"], payload["status"], payload["device_serial"]) == (
        flag.id,
        "overdue",
        "open",
        "ZFY0001",
    )
    assert payload["details"]["due_at"] == (OUT + timedelta(hours=24)).isoformat()
    raised = [entry for entry in logs if entry["event"] == "flag_raised"]
    assert [(e["kind"], e["device_id"], e["flag_id"]) for e in raised] == [("overdue", "ZFY0001", flag.id)]


def seed_dock_session(catalog: Catalog, audit: Any, *, drift_s: float) -> int:
    """ZFY0001 out at OUT, recordings at +1 h, +1 h 5 min and +2 h (one minute each), docked at +9 h."""
    with catalog.transaction() as db:
        officer = seed.officer(db, "000123", "张三")
        camera = seed.camera(db, "ZFY0001", assigned=officer, first_seen_at=OUT - timedelta(days=1))
        operations.checkout(db, audit, actor=CLERK, now=OUT, device_serial="ZFY0001")
        docked = OUT + timedelta(hours=9)
        dock = Dock(port="usb-1-1", state="empty", updated_at=docked, bytes_done=0, bytes_total=0)
        db.add(dock)
        db.flush()
        dock_session = DockVisit(
            dock_id=dock.id,
            camera_id=camera.id,
            state=SessionState.DONE,
            started_at=docked,
            ended_at=docked + timedelta(minutes=5),
        )
        db.add(dock_session)
        db.flush()
        db.add(
            ClockReading(
                camera_id=camera.id,
                dock_session_id=dock_session.id,
                measured_at=docked,
                offset_s=drift_s,
                state="synced",
            )
        )
        db.add(
            CustodyEvent(
                camera_id=camera.id,
                officer_id=officer.id,
                kind=CustodyKind.CHECK_IN,
                at=docked,
                actor="ingestd",
                actor_role="system",
                dock_session_id=dock_session.id,
            )
        )
        camera.checked_out_at = None
        # The day before, in another check-out: never compared with today's recordings.
        obj = seed.stored_object(db, seed.payload("yesterday"), stored_at=OUT)
        seed.recording(db, camera, obj, recorded_at=OUT - timedelta(hours=20), ingested_at=OUT)
        for i, start in enumerate((timedelta(hours=1), timedelta(hours=1, minutes=5), timedelta(hours=2))):
            obj = seed.stored_object(db, seed.payload(f"today-{i}"), stored_at=docked)
            seed.recording(
                db,
                camera,
                obj,
                recorded_at=OUT + start,
                ingested_at=docked,
                dock_session_id=dock_session.id,
            )
        return dock_session.id


def test_gaps_and_drift_after_a_session_are_flagged_once(catalog: Catalog, tmp_path: Path) -> None:
    services = make_services(catalog, tmp_path)
    dock_session_id = seed_dock_session(catalog, services.audit, drift_s=-45.0)
    now = OUT + timedelta(hours=10)
    first = evaluate_after_session(
        catalog, dock_session_id, services.config, now, notifier=services.flag_notifier
    )
    assert (
        evaluate_after_session(
            catalog, dock_session_id, services.config, now, notifier=services.flag_notifier
        )
        == []
    )
    by_kind = {flag.kind: flag for flag in first}
    assert sorted(by_kind) == ["drift", "gap"]
    with catalog.transaction() as db:
        recordings = db.scalars(
            select(Recording)
            .where(Recording.dock_session_id == dock_session_id)
            .order_by(Recording.recorded_at)
        ).all()
    gap = by_kind["gap"]
    # 1 h 5 min + 1 min to 2 h: a 54-minute gap, more than the 10-minute threshold; 4 minutes is not.
    assert gap.recording_id == recordings[2].id
    assert gap.details["gap_s"] == 54 * 60
    assert gap.details["previous_recording_id"] == recordings[1].id
    assert gap.dock_session_id == dock_session_id
    assert (by_kind["drift"].details["offset_s"], by_kind["drift"].details["bound_s"]) == (-45.0, 30.0)


def test_session_ended_runs_the_gap_job_at_once_in_the_scheduler(
    catalog: Catalog, tmp_path: Path, runner_cleanup: list[JobRunner]
) -> None:
    services = make_services(catalog, tmp_path, clock={"drift_alarm_seconds": 60.0})
    with time_machine.travel(OUT + timedelta(hours=8), tick=True):
        runner = JobRunner(services, clock=lambda: datetime.now(UTC))
        runner_cleanup.append(runner)
        runs = Runs(runner)
        runner.start()
        runs.next("retention-notices")
        seed_dock_session(catalog, services.audit, drift_s=-45.0)  # within the 60 s bound: no drift flag
        runner.session_ended()  # what the daemon calls when a dock session ends
        gaps = runs.next("gaps")
        assert runs.next("drift") == []
        runner.stop()
    assert [flag.kind for flag in gaps] == ["gap"]


def test_the_audit_checkpoint_job_signs_events_written_outside_a_session_or_command(
    catalog: Catalog, tmp_path: Path, runner_cleanup: list[JobRunner]
) -> None:
    services = make_services(catalog, tmp_path, jobs={"audit_checkpoint_interval_minutes": 5})
    checkpoints = services.audit.checkpoints
    with catalog.transaction() as db:
        officer = seed.officer(db, "000123", "张三")
        seed.camera(db, "ZFY0001", assigned=officer, first_seen_at=OUT)
        operations.checkout(db, services.audit, actor=CLERK, now=OUT, device_serial="ZFY0001")
    assert list(checkpoints.lines()) == []  # one event, checkpoint_every 1000: nothing signed yet
    with time_machine.travel(OUT, tick=True) as traveller:
        runner = JobRunner(services, clock=lambda: datetime.now(UTC))
        runner_cleanup.append(runner)
        runs = Runs(runner)
        runner.start()
        traveller.shift(timedelta(minutes=5))
        runner.scheduler.wakeup()
        runs.next("audit-checkpoint")
        signed = [line.checkpoint.seq for line in checkpoints.lines() if line.checkpoint is not None]
        traveller.shift(timedelta(minutes=5))
        runner.scheduler.wakeup()
        runs.next("audit-checkpoint")  # nothing new: nothing written
        runner.stop()
    assert signed == [1]
    assert [line.checkpoint.seq for line in checkpoints.lines() if line.checkpoint is not None] == [1]


def test_partial_copies_older_than_the_max_age_expire_with_an_audit_event_each(
    catalog: Catalog, tmp_path: Path
) -> None:
    services = make_services(catalog, tmp_path, ingest={"partial_max_age_hours": 48})
    # Durable points every MiB, so an unplug after 2 MiB leaves something to resume.
    services.store = FileObjectStore(
        tmp_path / "store", chunk_size=MiB // 4, fsync_interval=MiB
    ).create_directories()
    data = seed.payload("partial") * (3 * MiB // len(seed.payload("partial")) + 1)
    for key in ("ZFY0001-stale", "ZFY0002-fresh"):
        source = io.BufferedReader(UnpluggedCamera(data, 2 * MiB))
        with pytest.raises(OSError, match="camera unplugged"):
            services.store.put(cast(BinaryIO, source), resume_key=key)
    now = datetime.now(UTC)
    three_days_ago = (now - timedelta(days=3)).timestamp()
    for path in (tmp_path / "store" / "partial").glob("k-ZFY0001-stale-*"):
        os.utime(path, (three_days_ago, three_days_ago))
    with capture_logs() as logs:
        (expired,) = expire_partial_copies(services, now)
    assert expired.key == "ZFY0001-stale"
    assert [e["event"] for e in logs] == ["partial_expired"]
    assert expire_partial_copies(services, now) == []  # removed, and the fresh one is still young
    with catalog.transaction() as db:
        event = db.scalars(select(AuditEvent).where(AuditEvent.action == "partial.expired")).one()
        assert event.subject == "partial:ZFY0001-stale"
        assert event.actor_role == "system"
        assert event.details["durable_bytes"] == expired.durable > 0
        assert event.details["max_age_hours"] == 48
    assert services.store.put(io.BytesIO(data), resume_key="ZFY0002-fresh").resumed_from > 0


def test_a_partial_that_cannot_be_removed_is_logged_and_start_up_goes_on(
    catalog: Catalog, tmp_path: Path
) -> None:
    require_root_tools("mkfs.ext4", "chattr")
    services = make_services(catalog, tmp_path)
    with ext4_filesystem(tmp_path, 64) as mount_point:
        services.store = FileObjectStore(
            mount_point / "store", chunk_size=MiB // 4, fsync_interval=MiB
        ).create_directories()
        data = seed.payload("stuck") * (3 * MiB // len(seed.payload("stuck")) + 1)
        with pytest.raises(OSError, match="camera unplugged"):
            services.store.put(
                cast(BinaryIO, io.BufferedReader(UnpluggedCamera(data, 2 * MiB))), resume_key="k"
            )
        long_ago = (datetime.now(UTC) - timedelta(days=30)).timestamp()
        parts = list((mount_point / "store" / "partial").glob("k-k-*"))
        for path in parts:
            os.utime(path, (long_ago, long_ago))
        subprocess.run(["chattr", "+i", *map(str, parts)], check=True)  # the disk refuses the unlink
        try:
            with capture_logs() as logs:
                message = reconcile(services, datetime.now(UTC))
        finally:
            unseal_tree(mount_point)
    assert "0 expired" in message
    (failure,) = [e for e in logs if e["event"] == "partial_expiry_failed"]
    assert "Operation not permitted" in failure["error"]
