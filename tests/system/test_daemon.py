"""The real daemon as a subprocess, simulated serial cameras on real ptys docking through a folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import blake3
import pytest
from sqlalchemy import func, select

from drivers.simulator.volume import HOSTILE_DEEP_FIFO_DEPTH, hostile_deep_path
from ingestd.policies.flags import DEDUP_KEY_MAX
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
    FlagKind,
    Recording,
    SessionState,
)
from tests.conftest import BACKENDS
from tests.support import records as seed
from tests.support import sandbox
from tests.support.loopdev import mounted
from tests.system.harness import Daemon, SimulatedCamera, wait_for
from tests.system.pacing import paced

MIB = 1024 * 1024
LONG_AGO = datetime(2024, 1, 10, 2, 0, tzinfo=UTC)


def digests_of(paths: list[Path]) -> set[str]:
    return {blake3.blake3(path.read_bytes()).hexdigest() for path in paths}


def ended_sessions(daemon: Daemon, serial: str) -> list[DockVisit]:
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            return list(
                db.scalars(
                    select(DockVisit)
                    .join(Camera, Camera.id == DockVisit.camera_id)
                    .where(Camera.device_serial == serial, DockVisit.ended_at.is_not(None))
                    .order_by(DockVisit.id)
                ).all()
            )
    finally:
        catalog.close()


def wait_sessions(daemon: Daemon, serial: str, count: int = 1, timeout: float = 90.0) -> list[DockVisit]:
    def enough() -> list[DockVisit] | None:
        found = ended_sessions(daemon, serial)
        return found if len(found) >= count else None

    return wait_for(f"{count} ended session(s) of {serial}", enough, timeout=timeout)


def stored_digests(daemon: Daemon, serial: str) -> list[str]:
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            return list(
                db.scalars(select(Recording.blake3).join(Camera).where(Camera.device_serial == serial)).all()
            )
    finally:
        catalog.close()


def ingestctl_verify(daemon: Daemon) -> dict[str, object]:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from ingestd.ctl import main; main()",
            "verify",
            "--objects",
            "--json",
            "--config",
            str(daemon.config_path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    report = json.loads(done.stdout)
    assert isinstance(report, dict)
    report["exit_code"] = done.returncode
    return report


def test_serial_camera_is_identified_synced_ingested_and_wiped_after_proof(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera]
) -> None:
    camera = make_camera("ZFY1001", drift_s=3.5, battery=66, files=3)
    originals = camera.recordings()
    expected = digests_of(originals)
    assert len(expected) == 3
    status = daemon.start()
    assert status.startswith("reconciled")
    volume = camera.dock(daemon.docks)

    (dock_session,) = wait_sessions(daemon, "ZFY1001")
    assert dock_session.state is SessionState.DONE
    assert dock_session.battery_percent == 66
    assert dock_session.clock_offset_s == pytest.approx(3.5, abs=0.02)  # measured before the correction
    assert set(stored_digests(daemon, "ZFY1001")) == expected
    assert camera.recordings(volume) == []  # proven, then deleted from the camera

    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            reading = db.scalars(select(ClockReading)).one()
            # The clock ends synced: read back after setting, the camera is within 50 ms of the station.
            assert reading.state == "synced"
            assert reading.residual_s is not None
            assert abs(reading.residual_s) < 0.05
            assert reading.offset_s == pytest.approx(3.5, abs=0.02)
            kinds = db.scalars(select(CustodyEvent.kind)).all()
            assert kinds == [CustodyKind.CHECK_IN]
    finally:
        catalog.close()

    camera.undock(daemon.docks)
    wait_for(
        "check-out on undock", lambda: custody_kinds(daemon) == [CustodyKind.CHECK_IN, CustodyKind.CHECK_OUT]
    )
    summary = daemon.events("ingest_summary")[-1]
    assert summary["files"] == 3
    assert summary["device_id"] == "ZFY1001"
    assert summary["state"] == "done"
    assert daemon.stop() == 0
    report = ingestctl_verify(daemon)
    assert report["clean"] is True, report
    assert report["objects_checked"] == 3


def custody_kinds(daemon: Daemon) -> list[CustodyKind]:
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            return list(db.scalars(select(CustodyEvent.kind).order_by(CustodyEvent.id)).all())
    finally:
        catalog.close()


def test_two_cameras_at_once_and_a_failing_one_does_not_stall_the_other(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera]
) -> None:
    good = make_camera("ZFY2001", files=4, size_bytes=4 * MIB)
    other = make_camera("ZFY2002", files=4, size_bytes=4 * MIB)
    locked_out = make_camera("ZFY2003", files=2, password="999999")  # the station's password is refused
    daemon.start()
    for camera in (locked_out, good, other):
        camera.dock(daemon.docks)
    for serial in ("ZFY2001", "ZFY2002"):
        (session,) = wait_sessions(daemon, serial)
        assert session.state is SessionState.DONE
        assert session.files_done == 4
    failures = wait_for("the locked-out camera's failure", lambda: daemon.events("camera_open_failed"))
    assert "ZFY2003" in failures[0]["port"]
    assert "password refused" in failures[0]["error"]
    assert {e["device_id"] for e in daemon.events("ingest_summary")} == {"ZFY2001", "ZFY2002"}
    assert len(locked_out.recordings(daemon.docks / "ZFY2003")) == 2  # untouched


@pytest.mark.parametrize("daemon", BACKENDS, indirect=True)
def test_hostile_names_symlinks_and_devices_are_flagged_and_the_session_goes_on(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera]
) -> None:
    camera = make_camera("ZFY3001", files=2, extra_args=["--hostile"])
    secret = Path("/etc/passwd").read_bytes()
    daemon.start()
    camera.dock(daemon.docks)
    (session,) = wait_sessions(daemon, "ZFY3001")
    assert session.state is SessionState.DONE
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            flagged = db.scalars(select(Flag.details).where(Flag.kind == FlagKind.FAILED_FILE)).all()
            reasons = " | ".join(str(details) for details in flagged)
            assert "symbolic link" in reasons
            assert "fifo" in reasons
            # Paths longer than any key column are flagged in full (a PostgreSQL catalog refused them).
            files = {details["file"] for details in flagged}
            deep_fifo = os.fsdecode(hostile_deep_path(HOSTILE_DEEP_FIFO_DEPTH) + b"/fifo.MP4")
            assert deep_fifo in files
            assert len(deep_fifo) > DEDUP_KEY_MAX
            assert any(
                file.startswith(f"{deep_fifo[: -len('/fifo.MP4')]}/") and file != deep_fifo for file in files
            )
            stored = db.scalar(select(func.count()).select_from(Recording))
            assert stored is not None
            assert stored >= 2
    finally:
        catalog.close()
    for path in daemon.store.rglob("*"):
        if path.is_file():
            assert path.read_bytes() != secret  # nothing outside the volume was read into the store


def test_a_camera_whose_usb_serial_differs_from_its_reported_serial_is_flagged(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera]
) -> None:
    camera = make_camera("ZFY3101", files=1, extra_args=["--faults", "wrong-identity"])
    daemon.start()
    camera.dock(daemon.docks)
    (session,) = wait_sessions(daemon, "ZFY3101")
    assert session.state is SessionState.DONE  # ingested under the serial the camera reports...
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            flag = db.scalars(select(Flag).where(Flag.kind == FlagKind.IDENTITY_MISMATCH)).one()
            assert flag.details["device_serial"] == "ZFY3101"  # ...and flagged for a person to look at
            assert flag.details["usb_serial"] != "ZFY3101"
    finally:
        catalog.close()


def dock_progress(daemon: Daemon) -> list[tuple[str, int, int, float | None]]:
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            return [
                (d.state, d.bytes_done, d.bytes_total, d.rate_bps) for d in db.scalars(select(Dock)).all()
            ]
    finally:
        catalog.close()


def test_live_progress_is_persisted_about_once_a_second_while_copying(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera]
) -> None:
    camera = make_camera("ZFY3201", files=3, size_bytes=4 * MIB, **paced())  # ~12 s: several flushes
    daemon.start()
    camera.dock(daemon.docks)
    seen: list[tuple[str, int, int, float | None]] = []

    def moving() -> bool:
        rows = dock_progress(daemon)
        if rows and rows[0][0] == "ingesting" and 0 < rows[0][1] < rows[0][2]:
            seen.append(rows[0])
        return len({row[1] for row in seen}) >= 2

    wait_for("two different progress readings while ingesting", moving, timeout=60, interval=0.2)
    assert seen[-1][1] > seen[0][1]
    assert seen[-1][2] == 3 * 4 * MIB
    assert seen[-1][3] is not None  # a rate is known once bytes move
    (session,) = wait_sessions(daemon, "ZFY3201", timeout=120)
    assert session.state is SessionState.DONE


def partial_offsets(store: Path) -> list[int]:
    offsets = []
    for sidecar in (store / "partial").glob("*.json"):
        try:
            offsets.append(int(json.loads(sidecar.read_text())["durable"]))
        except (ValueError, KeyError, OSError):
            continue
    return offsets


def unplug_mid_copy(daemon: Daemon, camera: SimulatedCamera) -> None:
    """Dock the camera, take it out once part of a copy is durable; its session ends unplugged."""
    camera.dock(daemon.docks)
    wait_for_durable_partial(daemon)
    camera.undock(daemon.docks)
    (first,) = wait_sessions(daemon, camera.serial)
    assert first.state is SessionState.UNPLUGGED


def wait_for_durable_partial(daemon: Daemon) -> None:
    wait_for(
        "a durable partial copy",
        lambda: any(offset > 0 for offset in partial_offsets(daemon.store)),
        timeout=60,
        interval=0.005,
    )


def card_files(camera: SimulatedCamera, workdir: Path) -> dict[str, int]:
    """Recordings on the camera's card image and their sizes, read from a read-only mount of it."""
    assert camera.block is not None
    with mounted(camera.block, workdir / "card", "ro,noload") as card:
        return {str(path.relative_to(card)): path.stat().st_size for path in camera.recordings(card)}


@pytest.mark.parametrize("daemon", BACKENDS, indirect=True)
def test_unplug_mid_copy_keeps_the_camera_intact_and_the_next_dock_resumes(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera], tmp_path: Path
) -> None:
    # 12 MiB at 1 MiB/s: the first 4 MiB buffer is durable after ~4 s, the copy ends after ~12 s.
    camera = make_camera("ZFY4001", files=1, size_bytes=12 * MIB, **paced())
    (original,) = camera.recordings()
    on_card = {str(original.relative_to(camera.staging)): original.stat().st_size}
    daemon.start()
    unplug_mid_copy(daemon, camera)
    assert card_files(camera, tmp_path) == on_card  # nothing deleted: nothing was proven
    camera.dock(daemon.docks)
    sessions = wait_sessions(daemon, "ZFY4001", count=2, timeout=120)
    assert sessions[1].state is SessionState.DONE
    assert card_files(camera, tmp_path) == {}  # deleted from the card once proven
    stored = [e for e in daemon.events("recording_stored") if e.get("device_id") == "ZFY4001"]
    assert len(stored) == 1
    assert stored[0]["resumed_from"] > 0
    assert len(stored_digests(daemon, "ZFY4001")) == 1


@pytest.mark.parametrize("daemon", BACKENDS, indirect=True)
def test_kill_9_mid_ingest_then_restart_reconciles_and_stores_each_recording_once(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera]
) -> None:
    # 12 MiB at 1 MiB/s: killed once the first 4 MiB are durable, well before the copy ends.
    camera = make_camera("ZFY5001", files=2, size_bytes=6 * MIB, **paced())
    expected = digests_of(camera.recordings())
    # As the shipped unit runs it (PrivateMounts=yes, PrivateTmp=yes), so its mount of the card ends with
    # it: a killed daemon's mount outside that namespace would keep the card "in use" and refused at the
    # next dock. Its temporary directories (the mount's private one) are its own, here in the station.
    unit = sandbox.unit_settings()
    assert unit["PrivateMounts"] == unit["PrivateTmp"] == ["yes"]
    daemon.wrapper = sandbox.PRIVATE_MOUNTS
    private_tmp = {"TMPDIR": str(daemon.base / "tmp")}
    (daemon.base / "tmp").mkdir(parents=True)
    daemon.start(env=private_tmp)
    camera.dock(daemon.docks)
    wait_for_durable_partial(daemon)
    assert daemon.process is not None
    os.kill(daemon.process.pid, signal.SIGKILL)
    daemon.process.wait(timeout=30)
    status = daemon.start(env=private_tmp)
    assert "1 interrupted session" in status
    sessions = wait_sessions(daemon, "ZFY5001", count=2, timeout=120)
    assert sessions[0].state is SessionState.INTERRUPTED
    assert sessions[1].state is SessionState.DONE
    digests = stored_digests(daemon, "ZFY5001")
    assert sorted(digests) == sorted(expected)
    assert daemon.stop() == 0
    report = ingestctl_verify(daemon)
    assert report["clean"] is True, report


def test_a_partial_copy_no_dock_resumed_expires_at_start_with_an_audit_event(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera]
) -> None:
    camera = make_camera("ZFY5101", files=1, size_bytes=12 * MIB, **paced())  # ~12 s to copy
    daemon.start()
    unplug_mid_copy(daemon, camera)
    assert daemon.stop() == 0
    four_days_ago = time.time() - 4 * 24 * 3600  # past the default partial_max_age_hours (72)
    for path in (daemon.store / "partial").iterdir():
        os.utime(path, (four_days_ago, four_days_ago))
    status = daemon.start()
    assert "0 partial copy(ies) kept for resume, 1 expired" in status
    assert list((daemon.store / "partial").glob("k-*")) == []
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            (subject,) = db.scalars(
                select(AuditEvent.subject).where(AuditEvent.action == "partial.expired")
            ).all()
    finally:
        catalog.close()
    assert subject.startswith("partial:ZFY5101-")
    camera.dock(daemon.docks)  # the camera still holds the recording: copied again from the start
    sessions = wait_sessions(daemon, "ZFY5101", count=2, timeout=120)
    assert sessions[1].state is SessionState.DONE
    (stored,) = [e for e in daemon.events("recording_stored") if e.get("device_id") == "ZFY5101"]
    assert stored["resumed_from"] == 0
    assert daemon.stop() == 0
    assert ingestctl_verify(daemon)["clean"] is True


def session_times(daemon: Daemon, serial: str) -> tuple[datetime, datetime]:
    (ended,) = ended_sessions(daemon, serial)
    assert ended.state is SessionState.DONE
    assert ended.ended_at is not None
    return ended.started_at, ended.ended_at


def test_a_slow_dock_gives_back_its_slot_so_a_queued_camera_starts_and_both_finish(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera]
) -> None:
    # One slot, and a floor no real copy reaches: the first camera is "slow" after a second of copying.
    daemon.extra_config = (
        "[ingest]\nmax_concurrent = 1\nslow_rate_floor_mib_s = 1000000\nslow_rate_seconds = 1\n"
    )
    slow = make_camera("ZFY5201", files=2, size_bytes=6 * MIB, **paced())  # ~12 s: slow for certain
    queued = make_camera("ZFY5202", files=2)
    expected = {"ZFY5201": digests_of(slow.recordings()), "ZFY5202": digests_of(queued.recordings())}
    daemon.start()
    slow.dock(daemon.docks)
    wait_for("the first camera copying", lambda: any(row[0] == "ingesting" for row in dock_progress(daemon)))
    queued.dock(daemon.docks)
    (released,) = wait_for("the slow dock's slot released", lambda: daemon.events("copy_slot_released"))
    assert "ZFY5201" in released["port"]
    wait_sessions(daemon, "ZFY5202", timeout=120)
    wait_sessions(daemon, "ZFY5201", timeout=180)
    slow_started, slow_ended = session_times(daemon, "ZFY5201")
    queued_started, _queued_ended = session_times(daemon, "ZFY5202")
    # With the slot held to the end, the queued camera could only start after the slow one ended.
    assert slow_started < queued_started < slow_ended
    for serial, digests in expected.items():
        assert set(stored_digests(daemon, serial)) == digests  # the slow dock lost nothing


def test_a_stuck_session_does_not_stop_the_supervising_loop_pinging_the_watchdog(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera], monkeypatch: pytest.MonkeyPatch
) -> None:
    # At 16 KiB/s the first 4 MiB read of the copy blocks for minutes: the session is stuck in the card.
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # inherited by the daemon: ping every 0.2 s
    camera = make_camera("ZFY5301", files=1, size_bytes=8 * MIB, **paced(kib_per_s=16))
    daemon.start()
    camera.dock(daemon.docks)
    wait_for("the camera copying", lambda: any(row[0] == "ingesting" for row in dock_progress(daemon)))
    camera.undock(daemon.docks)  # the loop handles the undock while the session is still in its read
    time.sleep(1.0)
    daemon.notifications()
    assert daemon.watchdog_polls(3.0) >= 3, "the supervising loop stopped pinging while a session was stuck"
    camera.close()  # lifts the throttle: the read returns and the session ends as unplugged
    (session,) = wait_sessions(daemon, "ZFY5301")
    assert session.state is SessionState.UNPLUGGED
    wait_for("the check-out on undock", lambda: custody_kinds(daemon)[-1:] == [CustodyKind.CHECK_OUT])
    assert daemon.stop() == 0


def test_sigterm_stops_cleanly_and_reports_stopping(daemon: Daemon) -> None:
    daemon.start()
    assert daemon.stop() == 0
    assert daemon.events("stopped")


def test_every_line_of_the_daemon_log_is_json_apschedulers_warnings_too(daemon: Daemon) -> None:
    # APScheduler warns on its own logger when a run was missed (a station that slept): the daemon is
    # stopped (SIGSTOP) across the first run of a one-minute job, so the run is late by more than the
    # one-second grace. Jobs never block on the notify command, so a missed run is the warning to make.
    daemon.extra_config = "\n[jobs]\naudit_checkpoint_interval_minutes = 1\nmisfire_grace_seconds = 1\n"
    daemon.start()
    assert daemon.process is not None
    started = wait_for("the jobs", lambda: daemon.events("jobs_started"))
    # The interval counts from when the scheduler was built, a moment before `jobs_started`.
    first_run = datetime.fromisoformat(started[0]["timestamp"]) + timedelta(seconds=60)
    time.sleep(max(0.0, (first_run - timedelta(seconds=20) - datetime.now(UTC)).total_seconds()))
    daemon.process.send_signal(signal.SIGSTOP)
    try:
        time.sleep(max(0.0, (first_run + timedelta(seconds=15) - datetime.now(UTC)).total_seconds()))
    finally:
        daemon.process.send_signal(signal.SIGCONT)
    missed = wait_for(
        "APScheduler's missed-run warning",
        lambda: [e for e in daemon.events() if "was missed by" in e["event"]],
    )
    assert daemon.stop() == 0
    assert missed[0]["logger"].startswith("apscheduler")
    assert missed[0]["level"] == "warning"
    lines = daemon.log_text().splitlines()
    assert lines
    for line in lines:
        assert isinstance(json.loads(line), dict), line  # not one plain-text line


def open_sessions(daemon: Daemon) -> list[tuple[int, SessionState]]:
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            rows = db.execute(select(DockVisit.id, DockVisit.state).where(DockVisit.ended_at.is_(None)))
            return [(row.id, row.state) for row in rows]
    finally:
        catalog.close()


def test_a_second_daemon_on_the_same_state_refuses_before_touching_anything(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera]
) -> None:
    # Every camera reply takes 0.25 s (the driver waits 0.5 s) and its 8 MiB are read at 1 MiB/s, so its
    # dock session stays open well past the second daemon's refusal.
    camera = make_camera("ZFY5101", files=2, size_bytes=4 * MIB, **paced(faults="slow=250"))
    daemon.start()
    camera.dock(daemon.docks)
    live = wait_for("a live dock session", lambda: open_sessions(daemon), timeout=60)
    log_before = daemon.log_text()
    second = daemon.run_refused()
    assert open_sessions(daemon)[:1] == live[:1], second.stderr  # not marked interrupted
    assert second.returncode == 43, second.stderr
    assert second.stderr.count("\n") == 1
    assert second.stderr.startswith(f"ingestd: error: ingestd is already running on {daemon.state_dir} (pid ")
    assert f"pid {daemon.process.pid if daemon.process else '?'})" in second.stderr
    assert "reconciled" not in second.stdout
    assert daemon.control_socket.exists()
    [ended] = wait_sessions(daemon, "ZFY5101")
    assert ended.state is SessionState.DONE  # the first daemon finished it undisturbed
    assert daemon.log_text().startswith(log_before)
    assert daemon.stop() == 0


def test_a_station_with_stored_objects_refuses_to_start_on_an_unmounted_store(daemon: Daemon) -> None:
    # The catalog records footage, but the store's filesystem is not mounted: its mount point is empty.
    # Creating the layout there would make an empty store that a later purge reads as "objects absent".
    daemon.base.mkdir(parents=True)
    daemon.write_config()
    seed.current_schema(daemon.catalog_url)
    catalog = Catalog.open(daemon.catalog_url)
    try:
        with catalog.transaction() as db:
            camera = seed.camera(db, "ZFY0001", assigned=None, first_seen_at=LONG_AGO)
            obj = seed.stored_object(db, seed.payload("one"), stored_at=LONG_AGO)
            seed.recording(db, camera, obj, recorded_at=LONG_AGO, ingested_at=LONG_AGO)
    finally:
        catalog.close()
    daemon.store.mkdir()
    refused = daemon.run_refused()
    assert refused.returncode == 44, refused.stderr
    assert refused.stderr == (
        f"ingestd: error: object store {daemon.store} is not set up: {daemon.store / 'objects'} does not "
        "exist (is its filesystem mounted?)\n"
    )
    assert list(daemon.store.iterdir()) == []  # nothing created on the bare mount point
    assert not daemon.control_socket.exists()
