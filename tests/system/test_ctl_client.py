"""`ingestctl`'s one client against the real daemon: a user the kernel keeps off the socket is told which
group opens it (exit 13), and `verify` leaves the catalog to the daemon: recorded by it when it runs,
not recorded (and nothing written) when it does not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sqlalchemy import select

from store.checkpoints import CheckpointFile
from store.models import AuditEvent
from store.signing import Signer
from tests.support.osusers import OsUsers, run_ctl_as
from tests.system.harness import Daemon, iter_rows
from tests.system.test_control import ctl


def test_a_user_outside_the_socket_group_gets_exit_13_naming_the_group(
    daemon: Daemon, shared_dir: Path, os_users: OsUsers
) -> None:
    sock = os_users.group("sock")
    outsider = os_users.user("x", [])
    daemon.control_dir = shared_dir
    daemon.control_config = f'socket_group = "{sock}"'
    daemon.start()
    named = shared_dir / "config.toml"
    shutil.copyfile(daemon.config_path, named)
    named.chmod(0o644)
    # A config that leaves the group to the daemon: the socket's own group is named instead.
    unnamed = shared_dir / "default-group.toml"
    unnamed.write_text(named.read_text(encoding="utf-8").replace(f'socket_group = "{sock}"', ""))
    unnamed.chmod(0o644)

    for config in (named, unnamed):
        refused = run_ctl_as(outsider, "status", "--config", str(config))
        assert refused.returncode == 13, refused.stderr
        assert refused.stdout == ""
        assert refused.stderr == (
            f"ingestctl: error: permission denied on {daemon.control_socket}: "
            f"add user {outsider} to group '{sock}' (and log in again)\n"
        )


def verify_events(daemon: Daemon) -> list[tuple[int, str, str, str]]:
    catalog = daemon.catalog()
    try:
        rows = iter_rows(
            catalog,
            select(AuditEvent.seq, AuditEvent.action, AuditEvent.actor_user, AuditEvent.outcome)
            .where(AuditEvent.action.in_(["verify.run", "ctl.verify.record"]))
            .order_by(AuditEvent.seq),
        )
        return [(row.seq, row.action, row.actor_user, row.outcome) for row in rows]
    finally:
        catalog.close()


def test_verify_is_recorded_by_the_running_daemon_and_its_head_signed(daemon: Daemon) -> None:
    daemon.start()
    done = ctl(daemon, "verify", "--objects", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["clean"] is True
    assert report["recorded"] is True
    assert "not recorded" not in done.stderr

    # The daemon wrote it, as the caller it saw on the socket (root), and audited the request.
    (run_seq, *run), (request_seq, *request) = verify_events(daemon)
    assert run == ["verify.run", "root", "ok"]
    assert request == ["ctl.verify.record", "root", "ok"]
    assert request_seq > run_seq
    status = json.loads(ctl(daemon, "status", "--json").stdout)
    assert status["last_verify"]["clean"] is True
    assert status["last_verify"]["by"] == "root"
    assert status["last_verify"]["events_checked"] == report["events_checked"]
    # Anchored as before: a signed checkpoint covers both events, so deleting either is caught.
    key = Signer.load(daemon.state_dir).key_id
    checkpoints = CheckpointFile(daemon.state_dir / "audit-checkpoints.jsonl", set_append_only=False)
    assert checkpoints.last_seq(key) >= request_seq


def state_files(daemon: Daemon) -> list[str]:
    return sorted(p.name for p in daemon.state_dir.iterdir() if p.suffix not in (".db-shm", ".db-wal"))


def test_verify_with_the_daemon_down_writes_nothing_and_says_it_was_not_recorded(daemon: Daemon) -> None:
    daemon.start()
    assert daemon.stop() == 0
    files = [
        path
        for path in (daemon.state_dir / "catalog.db", daemon.state_dir / "audit-checkpoints.jsonl")
        if path.exists()
    ]
    before = {path: path.read_bytes() for path in files}
    listing = state_files(daemon)

    done = ctl(daemon, "verify", "--objects")
    assert done.returncode == 0, done.stderr  # clean, as before: not recording changes no exit code
    assert "Traceback" not in done.stderr
    assert done.stderr == (
        "ingestctl: this verify was not recorded for status and metrics: "
        f"ingestd is not running (no socket at {daemon.control_socket})\n"
    )
    assert {path: path.read_bytes() for path in files} == before
    # Nothing new but SQLite's WAL index, which a reader allowed to may create, and a WAL with no frame.
    wal = daemon.state_dir / "catalog.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    assert state_files(daemon) == listing
    as_json = json.loads(ctl(daemon, "verify", "--json").stdout)
    assert (as_json["clean"], as_json["recorded"]) == (True, False)
    assert verify_events(daemon) == []
