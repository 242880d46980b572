"""ingestctl over the control socket, against the real daemon: roles for real OS users, audited denials,
live progress, parseable --json for every read command, and clear errors for bad flags and ids."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ingestd.control.client import call
from store.models import AuditEvent
from tests.support.osusers import OsUsers, run_ctl_as
from tests.system.harness import Daemon, SimulatedCamera, iter_rows, stored_recordings, wait_for
from tests.system.pacing import paced

MIB = 1024 * 1024
CTL = "from ingestd.ctl import main; main()"


def ctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CTL, *args, "--config", str(daemon.config_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def audit_rows(daemon: Daemon, action_prefix: str) -> list[Any]:
    catalog = daemon.catalog()
    try:
        columns = select(
            AuditEvent.action,
            AuditEvent.actor_user,
            AuditEvent.actor_uid,
            AuditEvent.actor_role,
            AuditEvent.outcome,
            AuditEvent.source,
        )
        return list(iter_rows(catalog, columns.where(AuditEvent.action.like(f"{action_prefix}%"))))
    finally:
        catalog.close()


# --- roles for real OS users -------------------------------------------------------------------------


def test_roles_are_enforced_for_real_users_and_denials_audited(
    daemon: Daemon, shared_dir: Path, os_users: OsUsers
) -> None:
    sock = os_users.group("sock")
    admin_group, auditor_group = os_users.group("adm"), os_users.group("aud")
    viewer_group = os_users.group("vw")
    viewer = os_users.user("v", [viewer_group, sock])
    auditor = os_users.user("u", [auditor_group, sock])
    admin = os_users.user("a", [admin_group, sock])
    nobody = os_users.user("n", [sock])
    outsider = os_users.user("x", [])  # not even in the socket's group
    daemon.control_dir = shared_dir
    daemon.control_config = "\n".join(
        [
            f'socket_group = "{sock}"',
            f'admin_group = "{admin_group}"',
            f'auditor_group = "{auditor_group}"',
            f'viewer_group = "{viewer_group}"',
            'clerk_group = ""',
            'approver_group = ""',
        ]
    )
    daemon.start()
    config = shared_dir / "config.toml"
    shutil.copyfile(daemon.config_path, config)
    config.chmod(0o644)

    def as_user(user: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run_ctl_as(user, *args, "--config", str(config))

    mode = daemon.control_socket.stat()
    assert mode.st_mode & 0o777 == 0o660

    seen = as_user(viewer, "status", "--json")
    assert seen.returncode == 0, seen.stderr
    assert json.loads(seen.stdout)["served_by"] == "daemon"
    assert as_user(viewer, "cameras", "--json").returncode == 0

    refused = as_user(viewer, "audit", "--json")
    assert refused.returncode == 13, refused.stderr
    assert "permission denied" in refused.stderr
    assert "auditor" in refused.stderr

    no_role = as_user(nobody, "status", "--json")
    assert no_role.returncode == 13
    assert f"{nobody}" in no_role.stderr
    assert "no ingestd role" in no_role.stderr

    locked_out = as_user(outsider, "status")
    assert locked_out.returncode != 0
    assert "permission denied" in locked_out.stderr

    exported = as_user(auditor, "audit", "--format", "csv", "--action", "ctl.*")
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert {"event_type", "time", "place", "source", "outcome", "user"} <= set(rows[0])
    denied = {(row["user"], row["event_type"]) for row in rows if row["outcome"] == "denied"}
    assert (viewer, "ctl.audit") in denied
    assert (nobody, "ctl.status") in denied
    assert as_user(admin, "audit", "--json", "--limit", "5").returncode == 0

    # The chain itself, read as root: the real names and uids, the role held (or "none").
    by_user = {row.actor_user: row for row in audit_rows(daemon, "ctl.") if row.outcome == "denied"}
    assert by_user[viewer].actor_uid == int(subprocess.check_output(["id", "-u", viewer]))
    assert by_user[viewer].actor_role == "viewer"
    assert by_user[nobody].actor_role == "none"
    assert by_user[nobody].source.startswith(f"ctl:uid={by_user[nobody].actor_uid} ")
    assert outsider not in by_user  # the kernel refused the connection; nothing reached the daemon

    daemon.stop()
    down = as_user(viewer, "status")
    assert down.returncode == 69
    assert f"ingestd is not running (no socket at {daemon.control_socket}" in down.stderr
    assert "cannot read the catalog directly" in down.stderr


# --- progress, --json everywhere, and errors ---------------------------------------------------------


def test_status_json_shows_progress_moving(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera]
) -> None:
    daemon.extra_config = "\n[ingest]\ndelete_after_ingest = false\n"
    daemon.start()
    # 12 MiB read at 1 MiB/s: the copy outlasts several of the daemon's ~1 Hz progress flushes.
    camera = make_camera("ZFY0601", files=3, size_bytes=4 * MIB, **paced())
    camera.dock(daemon.docks)
    seen: list[int] = []

    def moving() -> bool:
        """A reading strictly mid-transfer, then a later, larger one (mid-transfer or the final total)."""
        for dock in call(daemon.control_socket, "status", {})["docks"]:
            done, total = dock["bytes_done"], dock["bytes_total"]
            ours = dock["port"].endswith("ZFY0601") and total
            if ours and ((not seen and 0 < done < total) or (seen and done > seen[-1])):
                seen.append(done)
        return len(seen) >= 2

    wait_for("bytes_done to move during the transfer", moving, timeout=60, interval=0.1)
    assert 0 < seen[0] < seen[1]
    shown = ctl(daemon, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["docks"][0]["port"]


def test_every_read_command_answers_json_and_refuses_bad_input(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera]
) -> None:
    daemon.start()
    camera = make_camera("ZFY0602", files=2)
    camera.dock(daemon.docks)
    stored_recordings(daemon, "ZFY0602", 2)
    assert ctl(daemon, "verify", "--json").returncode == 0

    outputs = {
        "status": ctl(daemon, "status", "--json"),
        "cameras": ctl(daemon, "cameras", "--json", "--serial", "ZFY0602"),
        "officers": ctl(daemon, "officers", "--json"),
        "footage": ctl(daemon, "footage", "--json", "--device", "ZFY0602", "--limit", "1"),
        "audit": ctl(daemon, "audit", "--json"),
    }
    parsed = {}
    for name, done in outputs.items():
        assert done.returncode == 0, f"{name}: {done.stderr}"
        parsed[name] = json.loads(done.stdout)
    assert parsed["status"]["last_verify"]["clean"] is True
    assert parsed["cameras"]["cameras"][0]["battery_percent"] == 80
    assert parsed["officers"]["officers"][0]["officer_no"] == "000101"
    assert parsed["footage"]["count"] == 1
    assert parsed["footage"]["next"]
    assert {"event_type", "time", "place", "source", "outcome", "user"} <= set(parsed["audit"][0])
    page2 = ctl(daemon, "footage", "--json", "--device", "ZFY0602", "--cursor", parsed["footage"]["next"])
    assert json.loads(page2.stdout)["recordings"][0]["id"] != parsed["footage"]["recordings"][0]["id"]
    assert any(row.action == "ctl.footage" for row in audit_rows(daemon, "ctl.footage"))

    bad = {
        ("cameras", "--serial", "NOPE"): "no camera with device serial 'NOPE'",
        ("officers", "--officer", "999999"): "no officer '999999'",
        ("footage", "--device", "NOPE"): "no camera with device serial 'NOPE'",
        ("footage", "--unit", "nope"): "no unit 'nope'",
        ("footage", "--since", "2026-13-01"): "not a date or an ISO 8601 time",
        ("footage", "--since", "2026-11-01T08:00"): "has no time zone",
        ("footage", "--cursor", "junk"): "cursor 'junk'",
        ("footage", "--class", "forever"): "Invalid value for '--class'",
        ("footage", "--limit", "0"): "Invalid value for '--limit'",
        ("status", "--bogus"): "No such option '--bogus'",
        ("audit", "--since", "yesterday"): "not a date",
        ("audit", "--format", "xml"): "Invalid value for '--format'",
        ("audit", "--output", "/nonexistent-dir/x.csv", "--format", "csv"): "cannot write",
    }
    for args, message in bad.items():
        done = ctl(daemon, *args)
        assert done.returncode != 0, args
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr, args


LONG_NAME = "Alexandria Montgomery-Smithson"  # 30 bytes: the most GA/T 947's userName[32] holds, near


def test_piped_tables_keep_every_cell_whole_for_grep(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera]
) -> None:
    daemon.start()
    camera = make_camera("ZFY0101", files=2, officer_name=LONG_NAME)
    camera.dock(daemon.docks)
    stored_recordings(daemon, "ZFY0101", 2)

    # capture_output: stdout is a pipe, as in `ingestctl cameras | grep ZFY0101`.
    for args, whole in (
        (("cameras",), ["ZFY0101"]),
        (("officers",), [LONG_NAME]),
        (("footage", "--device", "ZFY0101"), ["ZFY0101", LONG_NAME]),
        (("status",), [str(daemon.store)]),
    ):
        done = ctl(daemon, *args)
        assert done.returncode == 0, (args, done.stderr)
        assert "…" not in done.stdout, (args, done.stdout)
        matching = [line for line in done.stdout.splitlines() if all(word in line for word in whole)]
        expected = 2 if args[0] == "footage" else 1  # a line per recording, else one row (or line)
        assert len(matching) == expected, (args, done.stdout)


def test_garbage_gets_a_clear_error_others_are_served_and_metrics_scrape(daemon: Daemon) -> None:
    import socket  # noqa: PLC0415 - only this test speaks raw bytes
    import urllib.request  # noqa: PLC0415

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon.extra_config = f'\n[metrics]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'
    daemon.start()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert "ingestd_docked_cameras 0" in metrics
    assert 'ingestd_open_flags{kind="late"} 0' in metrics
    assert "# TYPE ingestd_ingest_bytes_total counter" in metrics
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.connect(str(daemon.control_socket))
    stalled.sendall(b'{"id": 1, "command": "sta')  # never finished
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(str(daemon.control_socket))
    deep = b'{"id": 8, "command": "status", "args": {"x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}}\n"
    surrogate = b'{"id": 9, "command": "footage", "args": {"device": "\\ud800"}}\n'  # audited: args kept
    raw.sendall(b"\xff\xfe not json\n" + b'{"id": 7, "command": "status", "args": []}\n' + deep + surrogate)
    answers = raw.makefile("rb")
    first, second = json.loads(answers.readline()), json.loads(answers.readline())
    third = json.loads(answers.readline())
    assert (third["error"]["code"], third["error"]["exit_code"]) == ("bad-request", 76)
    assert "nested deeper than 32 levels" in third["error"]["message"]
    fourth = json.loads(answers.readline())  # not a dead connection thread: an answer
    assert (fourth["id"], fourth["error"]["code"]) == (9, "bad-request")
    assert "unpaired surrogate" in fourth["error"]["message"]
    assert first["ok"] is False
    assert first["error"]["code"] == "bad-request"
    assert "not UTF-8" in first["error"]["message"]
    assert second["id"] == 7
    assert "args must be a JSON object" in second["error"]["message"]
    assert call(daemon.control_socket, "status", {})["store"]  # the others are still served
    raw.close()
    stalled.close()
    assert daemon.control_socket.exists()


def test_oversight_commands_answer_json_and_refuse_bad_input(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera], tmp_path: Path
) -> None:
    daemon.start()
    make_camera("ZFY0603", files=3).dock(daemon.docks)
    stored = stored_recordings(daemon, "ZFY0603", 3)
    today = datetime.now(UTC).date()
    period = ("--from", str(today - timedelta(days=2)), "--to", str(today + timedelta(days=1)))

    def ok_json(*args: str) -> Any:
        done = ctl(daemon, *args, "--json")
        assert done.returncode == 0, (args, done.stderr)
        return json.loads(done.stdout)

    sample = ok_json("spotcheck", "sample", *period, "--size", "2", "--seed", "night-shift")
    assert sample["population"] == 3
    assert len(sample["items"]) == 2
    assert {item["recording_id"] for item in sample["items"]} <= {r["id"] for r in stored}
    first = str(sample["items"][0]["recording_id"])
    judged = ok_json("spotcheck", "verdict", str(sample["id"]), first, "--pass", "--notes", "complete")
    assert judged["summary"]["pass"] == 1
    shown = ok_json("spotcheck", "show", str(sample["id"]))
    assert shown["reproduces"] is True  # the stored seed draws the same sample again
    report = ok_json("report", *period)
    assert report["totals"]["recordings"] == 3
    assert report["by_officer"][0]["recordings"] == 3
    assert ok_json("approvals")["approvals"] == []

    bad = {
        ("spotcheck", "show", "999"): "no inspection with id 999",
        ("spotcheck", "verdict", str(sample["id"]), "999999", "--pass"): "999999",
        ("spotcheck", "sample", "--month", "2026-13"): "2026-13",
        ("report", "--month", "last"): "last",
        ("report",): "give --month YYYY-MM",
        ("approvals", "999"): "no approval with id 999",
        ("revoke", "999", "--reason", "mistake"): "999",
        ("approve", "--purpose", "court", "--expires-in", "1h", "--for", "li"): "give a scope",
        ("approve", "--purpose", "court", "--expires-in", "1h", "--case", "C"): "Missing option '--for'",
        ("export", "--approval", "999", str(tmp_path / "never-written")): "approval",
        ("view", "--approval", "0", "1"): "Invalid value for '--approval'",
    }
    for args, message in bad.items():
        done = ctl(daemon, *args)
        assert done.returncode != 0, args
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr, args
        assert done.stdout == "", args
    assert not (tmp_path / "never-written").exists()


# --- denial of service: connection caps, lifetime, aggregated refusals ---------------------------------

# Runs as `user`: opens `count` connections, asks `status` once on each (a user without a role is refused,
# a connection over the cap is refused before that), prints the error codes as one JSON line; then keeps
# one accepted connection busy until the daemon ends it, and prints how it ended and how many were refused.
HOLDER = """
import json, os, pwd, socket, sys, time
from pathlib import Path
from ingestd.control.client import RemoteError, call
user, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
entry = pwd.getpwnam(user)
os.setgroups(os.getgrouplist(user, entry.pw_gid))
os.setgid(entry.pw_gid)
os.setuid(entry.pw_uid)
connections = []
def ask(connection, reader):
    try:
        connection.sendall(b'{"command": "status"}\\n')
    except OSError:
        pass  # the daemon closed it; its last answer still waits to be read
    line = reader.readline()
    return json.loads(line)["error"]["code"] if line else "closed"
codes = []
for _ in range(count):
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(60)
    connection.connect(path)
    reader = connection.makefile("rb")
    codes.append(ask(connection, reader))
    connections.append((connection, reader))
try:
    call(Path(path), "status", {})
    refused = None
except RemoteError as error:  # what ingestctl shows: the daemon's own message and exit code
    refused = [error.wire_code, error.exit_code, str(error)]
print(json.dumps({"codes": codes, "refused": refused}), flush=True)
held, reader = connections[codes.index("permission-denied")]
denied, code, stop = codes.count("permission-denied"), "open", time.monotonic() + 60
while time.monotonic() < stop:
    code = ask(held, reader)
    if code != "permission-denied":
        break
    denied += 1
    time.sleep(0.1)
print(json.dumps({"ended": code, "denied": denied}), flush=True)
"""


def test_one_uid_cannot_take_every_connection_connections_expire_and_refusals_are_counted(
    daemon: Daemon, shared_dir: Path, os_users: OsUsers
) -> None:
    sock = os_users.group("sock")
    hostile = os_users.user("h", [sock])  # may open the socket, holds no role
    daemon.control_dir = shared_dir
    daemon.control_config = "\n".join(
        [
            f'socket_group = "{sock}"',
            "max_connections = 6",
            "max_connections_per_uid = 2",
            "connection_lifetime_seconds = 3",
            "denial_audit_interval_seconds = 3600",  # so every count is written at stop, once
        ]
    )
    daemon.start()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, hostile, str(daemon.control_socket), "8"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        opened = json.loads(holder.stdout.readline() or "null")
        assert opened["codes"] == ["permission-denied"] * 2 + ["too-many-connections"] * 6
        code, exit_code, message = opened["refused"]
        assert (code, exit_code) == ("too-many-connections", 75)
        assert "already has 2 connections open to ingestd (at most 2)" in message
        # The hostile uid holds its two connections; root (admin) still gets one of the other slots.
        assert call(daemon.control_socket, "status", {})["store"]
        ended = json.loads(holder.stdout.readline() or "null")
        assert holder.wait(timeout=60) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert ended["ended"] == "connection-expired"  # however busy it kept the connection
    daemon.stop()

    catalog = daemon.catalog()
    try:
        columns = select(AuditEvent.action, AuditEvent.outcome, AuditEvent.details)
        events = list(iter_rows(catalog, columns.where(AuditEvent.actor_user == hostile)))
    finally:
        catalog.close()
    by_action: dict[str, list[int]] = {}
    for event in events:
        assert event.outcome == "denied"
        by_action.setdefault(event.action, []).append(event.details.get("count", 1))
    # The first refusal of each kind is written at once only when a request was refused; the rest are
    # one event with their count, so nothing is lost and the trail does not grow with the hammering.
    assert by_action == {"ctl.status": [1, ended["denied"] - 1], "ctl.connect": [7]}


# --- the direct catalog read, daemon down -------------------------------------------------------------


def test_a_role_holder_reads_the_stopped_stations_catalog_read_only_or_gets_one_line(
    daemon: Daemon, shared_dir: Path, os_users: OsUsers
) -> None:
    sock, approvers = os_users.group("sock"), os_users.group("apr")
    approver = os_users.user("p", [approvers, sock])
    daemon.control_dir = shared_dir
    daemon.control_config = f'socket_group = "{sock}"\napprover_group = "{approvers}"'
    # The catalog where the approver can read it but not write, as an agency granting read access would.
    database = shared_dir / "catalog" / "catalog.db"
    daemon.database_url = f"sqlite:///{database}"
    daemon.start()
    config = shared_dir / "config.toml"
    shutil.copyfile(daemon.config_path, config)
    config.chmod(0o644)
    assert daemon.stop() == 0
    database.parent.chmod(0o755)
    database.chmod(0o644)
    assert not database.with_name("catalog.db-shm").exists()  # a clean stop leaves no WAL index
    before = database.read_bytes()

    # No WAL index, and none can be made by a reader: one line and 69, never a traceback.
    down = run_ctl_as(approver, "status", "--config", str(config))
    assert down.returncode == 69, down.stderr
    assert "Traceback" not in down.stderr
    assert down.stderr.count("\n") == 1, down.stderr
    assert f"cannot read the catalog read-only: its WAL index {database}-shm is missing" in down.stderr
    assert down.stdout == ""

    # A WAL index that root left (root's tools, a killed daemon): read through it, read-only.
    with daemon.catalog().transaction() as db:
        db.execute(select(AuditEvent.seq).limit(1))
    assert database.with_name("catalog.db-shm").exists()
    shown = run_ctl_as(approver, "status", "--json", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["served_by"] == "catalog"
    table = run_ctl_as(approver, "status", "--config", str(config))
    assert table.returncode == 0, table.stderr
    assert "Docks" in table.stdout
    assert "read directly from the catalog" in table.stderr
    assert database.read_bytes() == before  # nothing was written
