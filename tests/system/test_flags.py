"""Every new flag is announced, whoever raises it: the real daemon's ingest logs `flag_raised` and runs
`[notify] command` once per flag, as the scheduled jobs do."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from store.models import Camera, Flag, FlagKind, SessionState
from tests.support.notify import notified, notify_command
from tests.system.harness import Daemon, SimulatedCamera, wait_for
from tests.system.test_daemon import wait_sessions


def camera_flags(daemon: Daemon) -> dict[int, tuple[FlagKind, str, int | None]]:
    """ZFY3201's flags in the catalog: id -> (kind, dedup key, recording id)."""
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            rows = db.scalars(select(Flag).join(Camera).where(Camera.device_serial == "ZFY3201")).all()
            return {flag.id: (flag.kind, flag.dedup_key, flag.recording_id) for flag in rows}
    finally:
        catalog.close()


def test_flags_raised_during_an_ingest_reach_the_log_and_the_notify_command_once_each(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera], tmp_path: Path
) -> None:
    command, out = notify_command(tmp_path)
    daemon.extra_config = f"\n[notify]\ncommand = '{command}'\n"
    # Recorded three days ago: past the 24 h upload deadline. A USB serial that is not the serial the
    # camera reports, and hostile files, raise identity-mismatch and failed-file flags in the same dock.
    three_days_ago = (datetime.now(UTC) - timedelta(days=3)).replace(microsecond=0).isoformat()
    camera = make_camera(
        "ZFY3201",
        files=2,
        extra_args=["--start", three_days_ago, "--faults", "wrong-identity", "--hostile"],
    )
    daemon.start()
    camera.dock(daemon.docks)
    (session,) = wait_sessions(daemon, "ZFY3201")
    assert session.state is SessionState.DONE

    wait_for("a notification per flag", lambda: len(notified(out)) >= len(camera_flags(daemon)) or None)
    assert daemon.stop() == 0  # the jobs the session's end woke have finished and announced, too
    flags = camera_flags(daemon)
    late = [recording_id for kind, _key, recording_id in flags.values() if kind is FlagKind.LATE]
    assert len(late) >= 2  # the two generated recordings, and hostile-named ones stored too
    assert {kind for kind, _key, _id in flags.values()} >= {FlagKind.IDENTITY_MISMATCH, FlagKind.FAILED_FILE}
    payloads = notified(out)
    assert sorted(payload["id"] for payload in payloads) == sorted(flags)  # each flag, once
    for payload in payloads:
        kind, dedup_key, recording_id = flags[payload["id"]]
        assert (payload["kind"], payload["dedup_key"], payload["recording_id"], payload["device_serial"]) == (
            kind.value,
            dedup_key,
            recording_id,
            "ZFY3201",
        )
    for payload in (p for p in payloads if p["kind"] == "late"):
        assert payload["dedup_key"] == f"late:r{payload['recording_id']}"
        assert payload["details"]["lateness_s"] > 24 * 3600  # stored two days after its deadline
    logged = daemon.events("flag_raised")
    assert sorted(entry["flag_id"] for entry in logged) == sorted(flags)
    assert all(entry["device_id"] == "ZFY3201" for entry in logged)


def test_a_slow_notify_command_does_not_hold_up_the_ingest_and_is_drained_at_stop(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    command, out = notify_command(tmp_path, gate=gate)  # every run waits until the gate opens
    daemon.extra_config = f"\n[notify]\ncommand = '{command}'\ntimeout_seconds = 300\n"
    camera = make_camera("ZFY3201", files=2, extra_args=["--faults", "wrong-identity"])
    daemon.start()
    camera.dock(daemon.docks)
    # The session raises an identity-mismatch flag at check-in, and ends while its notification waits.
    (session,) = wait_sessions(daemon, "ZFY3201")
    assert session.state is SessionState.DONE
    assert notified(out) == []
    events = [entry["event"] for entry in daemon.events()]
    assert events.index("flag_raised") < events.index("ingest_summary")  # logged at once, all the same
    gate.touch()
    wait_for("a notification per flag", lambda: len(notified(out)) >= len(camera_flags(daemon)) or None)
    assert daemon.stop() == 0
    assert sorted(payload["id"] for payload in notified(out)) == sorted(camera_flags(daemon))
    assert daemon.events("notify_dropped") == []


def test_a_notify_command_that_never_finishes_does_not_hold_up_the_daemons_stop(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera], tmp_path: Path
) -> None:
    command, out = notify_command(tmp_path, gate=tmp_path / "gate")  # the gate never opens
    daemon.extra_config = f"\n[notify]\ncommand = '{command}'\ntimeout_seconds = 300\n"
    camera = make_camera("ZFY3201", files=1, extra_args=["--faults", "wrong-identity"])
    daemon.start()
    camera.dock(daemon.docks)
    wait_sessions(daemon, "ZFY3201")
    assert daemon.stop() == 0  # within the harness's 60 s, though the command would wait 300 s
    assert notified(out) == []
    dropped = daemon.events("notify_dropped")
    assert sorted(entry["flag_id"] for entry in dropped) == sorted(camera_flags(daemon))
    assert {entry["reason"] for entry in dropped} == {"stopping"}
    events = [entry["event"] for entry in daemon.events()]
    assert events.index("stopping") < events.index("notify_dropped") < events.index("stopped")
