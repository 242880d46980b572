"""The daemon's scheduled jobs: overdue cameras, gaps, clock drift, retention notices, audit anchors.

Guarantees:
- Every job is idempotent. Flags carry the policy's deterministic `dedup_key`, so running a job twice,
  or two processes racing, raises each flag once; only a flag that is new is logged and notified (both
  by `ingestd.flagging`, the path the ingest session raises its flags by too).
- A job never deletes anything: retention jobs only give notices (`ingestctl purge` deletes).
- A job that fails logs the failure and leaves the scheduler running; the notify command runs on the
  notifier's thread, never the job's.
- Missed runs are coalesced into one (a suspended station does not replay a night of runs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import structlog
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]  # 3.x: untyped
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]  # 3.x: untyped
from sqlalchemy import select
from sqlalchemy.orm import Session

from ingestd.config import Config
from ingestd.flagging import FlagNotifier, FlagService
from ingestd.operations import FlagView
from ingestd.partials import expire_partial_copies
from ingestd.policies.clock import evaluate_drift
from ingestd.policies.custody import CustodyPeriod, checkout_covering, custody_periods
from ingestd.policies.deadlines import recording_end
from ingestd.policies.flags import FlagDecision
from ingestd.policies.gaps import RecordingSpan, evaluate_gaps
from ingestd.policies.overdue import CameraCustodyFacts, evaluate_overdue
from ingestd.policies.replication import PendingReplication, evaluate_unreplicated
from ingestd.purge import give_notices
from ingestd.services import Services
from store.audit import Actor
from store.catalog import Catalog
from store.models import (
    Camera,
    ClockReading,
    CustodyEvent,
    DockVisit,
    Recording,
    ReplicationItem,
    ReplicationKind,
    ReplicationState,
)
from store.types import utcnow

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
JOB_IDS = ("overdue", "gaps", "drift", "retention-notices", "partial-expiry", "audit-checkpoint")
PARTIAL_EXPIRY_INTERVAL = timedelta(hours=1)
UNREPLICATED_INTERVAL = timedelta(minutes=15)  # only with vault.enabled


# --- evaluations ------------------------------------------------------------------------------------


def evaluate_overdue_cameras(
    catalog: Catalog, config: Config, now: datetime, *, notifier: FlagNotifier
) -> list[FlagView]:
    """OVERDUE for every camera checked out longer than the upload window without docking; returns the
    new flags, announced."""
    with FlagService(notifier).transaction(catalog) as batch:
        rows = batch.db.scalars(select(Camera).where(Camera.checked_out_at.is_not(None))).all()
        facts = [
            CameraCustodyFacts(
                camera_serial=camera.device_serial,
                checked_out_at=camera.checked_out_at,
                last_docked_at=camera.last_docked_at,
                holder_officer_no=camera.holder.officer_no if camera.holder else None,
                camera_id=camera.id,
            )
            for camera in rows
        ]
        return batch.raise_flags(evaluate_overdue(facts, config.deadlines.window, now))


def evaluate_unreplicated_objects(
    catalog: Catalog, config: Config, now: datetime, *, notifier: FlagNotifier
) -> list[FlagView]:
    """UNREPLICATED for every object not replicated and verified within the replication deadline;
    returns the new flags, announced."""
    deadline = timedelta(hours=config.vault.replication_deadline_hours)
    with FlagService(notifier).transaction(catalog) as batch:
        rows = batch.db.scalars(
            select(ReplicationItem).where(
                ReplicationItem.kind == ReplicationKind.OBJECT,
                ReplicationItem.state != ReplicationState.REPLICATED,
                ReplicationItem.enqueued_at < now - deadline,
            )
        ).all()
        pending = [
            PendingReplication(r.subject, r.enqueued_at, r.state.value, r.attempts, r.last_error)
            for r in rows
        ]
        return batch.raise_flags(evaluate_unreplicated(pending, deadline, now))


def _custody_periods(db: Session, camera_id: int) -> list[CustodyPeriod]:
    events = db.execute(
        select(CustodyEvent.kind, CustodyEvent.at)
        .where(CustodyEvent.camera_id == camera_id)
        .order_by(CustodyEvent.at, CustodyEvent.id)
    ).all()
    return custody_periods((kind, at) for kind, at in events)


def _gap_decisions(
    db: Session, camera: Camera, dock_session_id: int, now: datetime, config: Config
) -> list[FlagDecision]:
    session_recordings = db.scalars(
        select(Recording).where(Recording.dock_session_id == dock_session_id, Recording.purged_at.is_(None))
    ).all()
    periods = _custody_periods(db, camera.id)
    touched = {checkout_covering(periods, r.recorded_at) for r in session_recordings} - {None}
    # A cut-off recording needs an explanation whether or not a check-out period covers it.
    uncovered_cut = [
        _span(camera, r, None)
        for r in session_recordings
        if r.interruption is not None and checkout_covering(periods, r.recorded_at) is None
    ]
    if not touched:
        return evaluate_gaps(uncovered_cut, config.gaps.threshold, now)
    # Compare with every recording of the same check-outs, including those stored at another dock.
    since = min(out for out in touched if out is not None)
    candidates = db.scalars(
        select(Recording).where(
            Recording.camera_id == camera.id, Recording.recorded_at >= since, Recording.purged_at.is_(None)
        )
    ).all()
    spans = list(uncovered_cut)
    for recording in candidates:
        checkout_at = checkout_covering(periods, recording.recorded_at)
        if checkout_at in touched:
            spans.append(_span(camera, recording, checkout_at))
    return evaluate_gaps(spans, config.gaps.threshold, now)


def _span(camera: Camera, recording: Recording, checkout_at: datetime | None) -> RecordingSpan:
    return RecordingSpan(
        recording_id=recording.id,
        camera_serial=camera.device_serial,
        checkout_at=checkout_at,
        start=recording.recorded_at,
        end=recording_end(recording.recorded_at, recording.duration_s),
        interrupted=recording.interruption is not None,
        interruption_cause=recording.interruption,
        camera_id=camera.id,
    )


def _drift_decisions(
    db: Session, camera: Camera, dock_session_id: int, now: datetime, config: Config
) -> list[FlagDecision]:
    readings = db.scalars(select(ClockReading).where(ClockReading.dock_session_id == dock_session_id)).all()
    decisions = []
    for reading in readings:
        decision = evaluate_drift(
            camera.device_serial,
            reading.offset_s,
            config.clock.drift_alarm_seconds,
            measured_at=reading.measured_at,
            now=now,
            camera_id=camera.id,
        )
        if decision is not None:
            decisions.append(decision)
    return decisions


_EVALUATIONS = {"gaps": _gap_decisions, "drift": _drift_decisions}


def evaluate_after_session(
    catalog: Catalog,
    dock_session_id: int,
    config: Config,
    now: datetime,
    *,
    notifier: FlagNotifier,
    kinds: Iterable[str] = ("drift", "gaps"),
) -> list[FlagView]:
    """Drift and gap flags for one dock session, once it has ended. Returns the new flags, announced."""
    with FlagService(notifier).transaction(catalog) as batch:
        db = batch.db
        dock_session = db.get(DockVisit, dock_session_id)
        if dock_session is None or dock_session.camera is None:
            return []
        camera = dock_session.camera
        decisions = [
            decision
            for kind in kinds
            for decision in _EVALUATIONS[kind](db, camera, dock_session_id, now, config)
        ]
        return batch.raise_flags(decisions, dock_session_id=dock_session_id)


def evaluate_recent_sessions(
    catalog: Catalog, config: Config, now: datetime, kind: str, *, notifier: FlagNotifier
) -> list[FlagView]:
    """`kind` ("drift" or "gaps") over the dock sessions that ended within the look-back window: catches
    sessions whose immediate evaluation was missed (the daemon stopped in between)."""
    since = now - timedelta(hours=config.jobs.lookback_hours)
    with catalog.transaction() as db:
        ids = db.scalars(
            select(DockVisit.id)
            .where(DockVisit.ended_at >= since, DockVisit.camera_id.is_not(None))
            .order_by(DockVisit.id)
        ).all()
    fresh: list[FlagView] = []
    for dock_session_id in ids:
        fresh += evaluate_after_session(
            catalog, dock_session_id, config, now, notifier=notifier, kinds=(kind,)
        )
    return fresh


# --- the scheduler ----------------------------------------------------------------------------------


def _job(name: str, clock: Clock, work: Callable[[datetime], list[FlagView]]) -> Callable[[], list[FlagView]]:
    def run() -> list[FlagView]:
        try:
            fresh = work(clock())
        except Exception as error:  # noqa: BLE001 - a failed run is logged; the next run tries again
            log.error("job_failed", job=name, error=f"{type(error).__name__}: {error}")  # noqa: TRY400 - the type and message are the story
            return []
        log.debug("job_done", job=name, new_flags=len(fresh))
        return fresh

    run.__name__ = f"job_{name.replace('-', '_')}"
    return run


def build_scheduler(services: Services, clock: Clock = utcnow) -> BackgroundScheduler:
    """A UTC BackgroundScheduler holding the jobs, not started. Overdue and retention notices run once at
    start too, so a restart never waits a whole interval to catch up (the daemon's reconcile expires
    partial copies before READY)."""
    config = services.config
    jobs = config.jobs
    catalog = services.catalog
    notifier = services.flag_notifier
    scheduler = BackgroundScheduler(
        timezone=UTC,
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": jobs.misfire_grace_seconds},
    )
    system = Actor.system(source="job:retention-notices")

    def notices(now: datetime) -> list[FlagView]:
        give_notices(catalog, services.audit, actor=system, now=now, rules=config.retention.rules())
        return []

    def partials(now: datetime) -> list[FlagView]:
        expire_partial_copies(services, now)
        return []

    def anchor(_now: datetime) -> list[FlagView]:
        services.audit.anchor(catalog)
        return []

    work: dict[str, tuple[Callable[[datetime], list[FlagView]], timedelta, bool]] = {
        "overdue": (
            lambda now: evaluate_overdue_cameras(catalog, config, now, notifier=notifier),
            timedelta(minutes=jobs.overdue_interval_minutes),
            True,
        ),
        "gaps": (
            lambda now: evaluate_recent_sessions(catalog, config, now, "gaps", notifier=notifier),
            timedelta(minutes=jobs.gaps_interval_minutes),
            False,
        ),
        "drift": (
            lambda now: evaluate_recent_sessions(catalog, config, now, "drift", notifier=notifier),
            timedelta(minutes=jobs.drift_interval_minutes),
            False,
        ),
        "retention-notices": (notices, timedelta(hours=jobs.retention_interval_hours), True),
        "partial-expiry": (partials, PARTIAL_EXPIRY_INTERVAL, False),
        "audit-checkpoint": (anchor, timedelta(minutes=jobs.audit_checkpoint_interval_minutes), False),
    }
    if config.vault.enabled:
        work["unreplicated"] = (
            lambda now: evaluate_unreplicated_objects(catalog, config, now, notifier=notifier),
            UNREPLICATED_INTERVAL,
            True,
        )
    for name, (function, interval, at_start) in work.items():
        options = {"next_run_time": clock()} if at_start else {}
        scheduler.add_job(
            _job(name, clock, function),
            IntervalTrigger(seconds=interval.total_seconds(), timezone=UTC),
            id=name,
            name=name,
            **options,
        )
    return scheduler


class JobRunner:
    """What the daemon starts and stops. `session_ended()` asks for gap and drift checks now."""

    def __init__(self, services: Services, clock: Clock = utcnow) -> None:
        self.services = services
        self.clock = clock
        self.scheduler = build_scheduler(services, clock)

    @property
    def enabled(self) -> bool:
        return self.services.config.jobs.enabled

    def start(self) -> None:
        if self.enabled and not self.scheduler.running:
            self.scheduler.start()
            log.info("jobs_started", jobs=list(JOB_IDS))

    def session_ended(self) -> None:
        """Run the gap and drift jobs as soon as possible (in the scheduler's threads, never the
        caller's); they cover every recent session, so no session id is needed."""
        if not self.scheduler.running:
            return
        for job_id in ("gaps", "drift"):
            self.scheduler.modify_job(job_id, next_run_time=self.clock())
        self.scheduler.wakeup()

    def stop(self, *, wait: bool = True) -> None:
        """Stop scheduling and, with `wait`, let a running job finish its transaction."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)
            log.info("jobs_stopped")
