"""Evidence export, `status --watch` and audit export files, against the real daemon as a subprocess
(issue 6): `ingestctl` runs as real OS users in the clerk, approver and auditor groups, on a camera that
docked through the daemon; exports are checked with `ingestctl verify-export` and the `bagit` library.
"""

from __future__ import annotations

import csv
import json
import os
import pty
import pwd
import re
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fcntl import ioctl
from pathlib import Path
from typing import Any

import bagit
import pytest

from tests.support import sandbox
from tests.support.osusers import BOOTSTRAP, OsUsers, run_ctl_as
from tests.system.harness import Daemon, SimulatedCamera, remove_tree, stored_recordings, wait_for
from tests.system.pacing import paced

MIB = 1024 * 1024
CTL = "from ingestd.ctl import main; main()"
INGESTD = "from ingestd.cli import main; main()"
EXIT_APPROVAL_REFUSED = 14  # ingestd/ctl/evidence.py
EXIT_BAG_PROBLEMS = 3
EXIT_SIGNER_UNVERIFIED = 17
EXIT_OUTPUT = 71  # ingestd/ctl/read.py
CJIS_FIELDS = {"event_type", "time", "place", "source", "outcome", "user"}
ROLES = ("clerk", "approver", "auditor")


@dataclass
class Station:
    """The daemon with one docked camera's recordings; each role held by an OS user of its own."""

    daemon: Daemon
    config: Path  # a copy the role users can read, in a root-owned 0711 directory
    users: dict[str, str]
    recordings: list[int]

    def run(self, role: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run_ctl_as(self.users[role], *args, "--config", str(self.config))

    def approve(self, *args: str) -> dict[str, Any]:
        done = self.run(
            "approver",
            "approve",
            "--purpose",
            "行政复议 evidence",
            "--for",
            self.users["clerk"],
            *args,
            "--json",
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def own_dir(self, role: str, name: str) -> Path:
        """A new directory owned by the role's user (exports must go where the caller may write)."""
        entry = pwd.getpwnam(self.users[role])
        path = self.config.parent / name
        path.mkdir(mode=0o700)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        return path


@pytest.fixture
def station(
    daemon: Daemon,
    shared_dir: Path,
    os_users: OsUsers,
    make_camera: Callable[..., SimulatedCamera],
) -> Station:
    sock = os_users.group("sock")
    groups = {role: os_users.group(role[:3]) for role in ROLES}
    users = {role: os_users.user(role[:2], [group, sock]) for role, group in groups.items()}
    daemon.control_dir = shared_dir
    daemon.control_config = "\n".join(
        [f'socket_group = "{sock}"', 'admin_group = ""', 'viewer_group = ""']
        + [f'{role}_group = "{group}"' for role, group in groups.items()]
    )
    daemon.start()
    config = shared_dir / "config.toml"
    config.write_bytes(daemon.config_path.read_bytes())
    config.chmod(0o644)
    make_camera("ZFY0701", files=2).dock(daemon.docks)
    found = stored_recordings(daemon, "ZFY0701", 2)
    return Station(daemon, config, users, sorted(r["id"] for r in found))


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The only line on stderr: a clear error, no traceback, nothing on stdout."""
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert done.stdout == ""
    return lines[0]


# --- export refused without a valid approval ------------------------------------------------------------


def test_export_without_a_valid_approval_is_refused_audited_and_writes_nothing(station: Station) -> None:
    first, second = station.recordings
    exports = station.own_dir("clerk", "exports")
    # Expired for real: the daemon is another process (no time machine), so it expires a few s from now
    # (long enough for `approve` itself to finish on a loaded machine).
    expiring = station.approve("--recording", str(first), "--expires-at", _in_seconds(8))
    scoped = station.approve("--recording", str(first), "--expires-in", "1h")
    attempts = {
        "missing": ("--approval", "9999"),
        "out-of-scope": ("--approval", str(scoped["id"]), "--recording", str(second)),
        "expired": ("--approval", str(expiring["id"])),
    }
    expiry = datetime.fromisoformat(expiring["expires_at"])
    for code, args in attempts.items():
        if code == "expired":
            wait_for("the approval to expire", lambda: datetime.now(UTC) > expiry, timeout=30)
        done = station.run("clerk", "export", *args, str(exports / code))
        assert done.returncode == EXIT_APPROVAL_REFUSED, (code, done.stderr)
        line = one_line(done)
        assert line.startswith("ingestctl: error: approval "), line
        assert f"access refused ({code})" in line
        if code == "out-of-scope":
            assert f"recording(s) {second} are not in its scope" in line
    assert list(exports.iterdir()) == []  # no DEST, no DEST.partial

    trail = station.run("auditor", "audit", "--json", "--action", "footage.export")
    assert trail.returncode == 0, trail.stderr
    by_dest = {e["details"]["destination"]: e for e in json.loads(trail.stdout)}
    for code in attempts:
        event = by_dest[str(exports / code)]
        assert (event["outcome"], event["details"]["code"]) == ("refused", code)
        assert (event["user"], event["role"]) == (station.users["clerk"], "clerk")


def _in_seconds(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


# --- an approved export, and one changed byte ------------------------------------------------------------


def verify_export(bag: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`ingestctl verify-export` as a script runs it: stdout a pipe, whose lines are never wrapped."""
    return subprocess.run(
        [sys.executable, "-c", CTL, "verify-export", str(bag), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={key: value for key, value in os.environ.items() if key != "COLUMNS"},
    )


def test_an_approved_export_verifies_and_one_flipped_byte_fails_both_validators(station: Station) -> None:
    first, second = station.recordings
    approval = station.approve("--recording", str(first), "--recording", str(second), "--expires-in", "1h")
    bag = station.own_dir("clerk", "exports") / "bag"
    done = station.run("clerk", "export", "--approval", str(approval["id"]), str(bag), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["destination"], result["recording_ids"]) == (str(bag), station.recordings)
    assert bag.stat().st_uid == pwd.getpwnam(station.users["clerk"]).pw_uid  # handed to the caller

    unpinned = verify_export(bag)  # a court that has not got the station key: not "valid"
    assert unpinned.returncode == EXIT_SIGNER_UNVERIFIED, unpinned.stdout + unpinned.stderr
    assert "signer unverified" in unpinned.stdout

    shown = subprocess.run(
        [sys.executable, "-c", INGESTD, "key", "show", "--config", str(station.daemon.config_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"# ingestd station key {result['key_id']}" in shown.stdout  # the fingerprint on the note
    key_file = bag.parent / "station.pem"
    key_file.write_text(shown.stdout)  # what `key show` prints is itself a key file
    clean = verify_export(bag, "--public-key", str(key_file))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "2 file(s)" in clean.stdout
    assert clean.stdout.rstrip().endswith("valid")
    bagit.Bag(str(bag)).validate()

    victim = sorted((bag / "data").iterdir())[0]
    victim.chmod(0o640)  # the bag is handed over read-only
    with victim.open("r+b") as payload:
        payload.seek(100)
        byte = payload.read(1)
        payload.seek(100)
        payload.write(bytes([byte[0] ^ 0x01]))

    broken = verify_export(bag, "--public-key", str(key_file))
    assert broken.returncode == EXIT_BAG_PROBLEMS, broken.stdout + broken.stderr
    mismatches = [line for line in broken.stdout.splitlines() if "-mismatch" in line]
    assert mismatches, broken.stdout
    assert all(line.startswith("PROBLEM") and f"data/{victim.name}" in line for line in mismatches)
    reported = json.loads(verify_export(bag, "--public-key", str(key_file), "--json").stdout)["problems"]
    listed = [line for line in broken.stdout.splitlines() if line.startswith("PROBLEM ")]
    assert listed == [f"PROBLEM {p['kind']} {p['subject']}: {p['detail']}" for p in reported]  # whole lines
    with pytest.raises(bagit.BagValidationError) as invalid:
        bagit.Bag(str(bag)).validate()
    assert f"data/{victim.name}" in str(invalid.value)


# --- under the shipped unit's sandbox --------------------------------------------------------------------

CAP_DAC_OVERRIDE = 1  # linux/capability.h


@pytest.fixture
def sandboxed(daemon: Daemon, shared_dir: Path) -> Iterator[Path]:
    """The daemon (started later by `station`) runs under systemd/ingestd.service's sandbox, emulated;
    the directory returned stands for /home: out of the daemon's sight (ProtectHome, PrivateTmp)."""
    reason = sandbox.usable()
    if reason is not None:
        pytest.skip(f"cannot emulate the unit's sandbox: {reason}")
    home = Path(tempfile.mkdtemp(prefix="ingestd-home-"))
    home.chmod(0o711)
    for path in (daemon.state_dir, daemon.store, daemon.docks):  # the docks folder: read-only to it
        path.mkdir(parents=True, exist_ok=True)
    daemon.wrapper = sandbox.sandbox_wrapper(
        {"/var/lib/ingestd": [daemon.state_dir, daemon.store], "/run/ingestd": [shared_dir]}, [home]
    )
    try:
        yield home
    finally:
        remove_tree(home)


def test_under_the_units_sandbox_export_and_copy_reach_a_directory_the_daemon_cannot_see(
    sandboxed: Path, station: Station
) -> None:
    """Listed before `station`, `sandboxed` wraps the daemon before it starts."""
    first, second = station.recordings
    approval = str(
        station.approve("--recording", str(first), "--recording", str(second), "--expires-in", "1h")["id"]
    )
    clerk = pwd.getpwnam(station.users["clerk"])
    home = sandboxed / "clerk"
    home.mkdir(mode=0o700)
    os.chown(home, clerk.pw_uid, clerk.pw_gid)
    assert station.daemon.process is not None
    pid = station.daemon.process.pid
    # The sandbox holds: the clerk's home is out of the daemon's sight, the rest is read-only to it, and
    # it runs without CAP_DAC_OVERRIDE.
    assert not Path(f"/proc/{pid}/root{home}").exists()
    probe = subprocess.run(
        ["nsenter", f"--mount=/proc/{pid}/ns/mnt", "--", "mkdir", str(station.daemon.base / "probe")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode != 0
    assert "Read-only file system" in probe.stderr
    status = Path(f"/proc/{pid}/status").read_text()
    bounding = re.search(r"^CapBnd:\s*([0-9a-f]+)$", status, re.MULTILINE)
    assert bounding is not None
    assert not int(bounding.group(1), 16) & (1 << CAP_DAC_OVERRIDE)

    bag = home / "bag"
    done = station.run("clerk", "export", "--approval", approval, str(bag), "--json")
    assert done.returncode == 0, done.stderr
    assert bag.stat().st_uid == clerk.pw_uid
    checked = verify_export(bag, "--public-key", str(station.daemon.state_dir / "audit-signing.pub"))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    copied = home / "copy"
    done = station.run("clerk", "copy", "--approval", approval, str(copied))
    assert done.returncode == 0, done.stderr
    sums = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=copied, capture_output=True, text=True, check=False
    )
    assert sums.returncode == 0, sums.stdout + sums.stderr
    assert sums.stdout.count(": OK") == 2


# --- status --watch ---------------------------------------------------------------------------------------

PERCENT = re.compile(r"[█░]+ +(\d+)%")  # the status bar and its percentage
HIDE_CURSOR, SHOW_CURSOR, CURSOR_UP = b"\x1b[?25l", b"\x1b[?25h", b"\x1b[1A"


@dataclass
class Watcher:
    """`ingestctl status --watch` with its stdout on a real pty (an operator's terminal) or a pipe."""

    process: subprocess.Popen[bytes]
    stdout_fd: int
    errors: Path
    tty: bool
    output: bytearray = field(default_factory=bytearray)
    reader: threading.Thread | None = None

    def read(self) -> None:
        while True:
            try:
                chunk = os.read(self.stdout_fd, 65536)
            except OSError:  # EIO: the last writer closed the pty
                return
            if not chunk:
                return
            self.output += chunk

    def readings(self, serial: str) -> list[tuple[int, int]]:
        """(done, total) of the camera's dock, in the order the watcher showed them."""
        if self.tty:  # on a terminal the bar's percentage: (percent, 100)
            text = bytes(self.output).decode("utf-8", errors="replace")
            return [(int(percent), 100) for percent in PERCENT.findall(text)]
        found = []
        for line in bytes(self.output).decode().splitlines():
            for dock in json.loads(line)["docks"]:
                if dock["port"].endswith(serial) and dock["bytes_total"]:
                    found.append((dock["bytes_done"], dock["bytes_total"]))
        return found

    def stop(self, signum: int) -> tuple[int, str]:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=30)
        if self.reader is not None:
            self.reader.join(timeout=30)
        return code, self.errors.read_text(encoding="utf-8", errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        os.close(self.stdout_fd)


@pytest.fixture
def watchers(tmp_path: Path) -> Iterator[Callable[..., Watcher]]:
    started: list[Watcher] = []

    def start(
        daemon: Daemon, *flags: str, tty: bool, user: str | None = None, config: Path | None = None
    ) -> Watcher:
        """As root, or as `user` (who needs a `config` it can read)."""
        errors = tmp_path / f"watcher-{len(started)}.err"
        program = ["-c", CTL] if user is None else ["-c", BOOTSTRAP, user]
        argv = [
            sys.executable,
            *program,
            "status",
            "--watch",
            *flags,
            "--config",
            str(config or daemon.config_path),
        ]
        env = {**os.environ, "TERM": "xterm-256color"}
        with errors.open("wb") as stderr:
            if tty:
                fd, terminal = pty.openpty()
                ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
                process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=terminal, stderr=stderr, env=env
                )
                os.close(terminal)
            else:
                process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
                )
                assert process.stdout is not None
                fd = os.dup(process.stdout.fileno())
                process.stdout.close()
        watcher = Watcher(process, fd, errors, tty)
        watcher.reader = threading.Thread(target=watcher.read, daemon=True)
        watcher.reader.start()
        started.append(watcher)
        return watcher

    try:
        yield start
    finally:
        for watcher in started:
            watcher.close()


@pytest.fixture
def busy_station(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera]
) -> tuple[Daemon, SimulatedCamera]:
    """The daemon and an undocked camera whose 12 MiB are read at 1 MiB/s: its copy spans several of
    --watch's refreshes."""
    daemon.extra_config = "\n[ingest]\ndelete_after_ingest = false\n"
    camera = make_camera("ZFY0702", files=3, size_bytes=4 * MIB, **paced())
    daemon.start()
    return daemon, camera  # the daemon and camera fixtures stop and clean up both


def test_status_watch_redraws_moving_progress_and_ends_cleanly_on_sigint_or_sigterm(
    busy_station: tuple[Daemon, SimulatedCamera], watchers: Callable[..., Watcher]
) -> None:
    daemon, camera = busy_station
    # Piped, a rich live display prints nothing until it ends, so --watch --json (a line a refresh) is
    # the piped form; on a terminal the table is redrawn in place.
    started = {
        (signum, tty): watchers(daemon, *(() if tty else ("--json",)), tty=tty)
        for signum in (signal.SIGINT, signal.SIGTERM)
        for tty in (True, False)
    }
    wait_for("every watcher's first refresh", lambda: all(w.output for w in started.values()), timeout=30)
    camera.dock(daemon.docks)

    def finished() -> bool:
        return all(
            (seen := w.readings(camera.serial)) and seen[-1][0] == seen[-1][1] for w in started.values()
        )

    wait_for("every watcher to show the finished copy", finished, timeout=120)
    for (signum, tty), watcher in started.items():
        what = f"{signal.Signals(signum).name} {'terminal' if tty else 'pipe'}"
        seen = watcher.readings(camera.serial)
        done = [d for d, _ in seen]
        assert any(0 < d < t for d, t in seen), (what, seen)  # a reading mid-copy...
        assert done == sorted(done), (what, seen)  # ...then only forwards, to the total
        assert len(set(done)) >= 2, (what, seen)
        code, errors = watcher.stop(signum)
        assert code == 0, (what, code, errors)  # the documented end of --watch
        assert errors == "", (what, errors)  # no traceback, nothing at all
        if tty:
            screen = bytes(watcher.output)
            assert screen.count(b"Docks") >= 3, what  # the table, drawn again and again...
            assert CURSOR_UP in screen, what  # ...in place
            assert screen.rfind(SHOW_CURSOR) > screen.rfind(HIDE_CURSOR) >= 0, what  # cursor given back
        else:
            lines = bytes(watcher.output).decode().splitlines()
            assert len(lines) >= 3, what
            assert all(json.loads(line)["served_by"] == "daemon" for line in lines)


def test_status_watch_says_inside_its_view_that_the_daemon_stopped(
    daemon: Daemon, watchers: Callable[..., Watcher], shared_dir: Path, os_users: OsUsers
) -> None:
    sock, viewers = os_users.group("sock"), os_users.group("vw")
    viewer = os_users.user("v", [viewers, sock])  # may not read the catalog: nothing to fall back on
    daemon.control_dir = shared_dir
    daemon.control_config = f'socket_group = "{sock}"\nviewer_group = "{viewers}"'
    daemon.start()
    config = shared_dir / "config.toml"
    config.write_bytes(daemon.config_path.read_bytes())
    config.chmod(0o644)
    as_root = watchers(daemon, tty=True)
    as_viewer = watchers(daemon, tty=True, user=viewer, config=config)
    started = (as_root, as_viewer)
    wait_for("both watchers' first view", lambda: all(b"Docks" in w.output for w in started), timeout=30)
    assert daemon.stop() == 0
    screens = {
        "root": (as_root, "(read from the catalog: the daemon is not running)"),
        # The whole notice on one line of the live view, which keeps running.
        "viewer": (
            as_viewer,
            (
                f"ingestd is not running (no socket at {daemon.control_socket}; and you "
                "cannot read the catalog directly); trying again every 1 s (Ctrl-C ends)"
            ),
        ),
    }
    for who, (watcher, notice) in screens.items():
        shown = notice.encode()
        wait_for(f"{who}'s notice", lambda: shown in watcher.output, timeout=30)  # noqa: B023 - waited here
        assert watcher.process.poll() is None, who
    for who, (watcher, _notice) in screens.items():
        code, errors = watcher.stop(signal.SIGINT)
        assert (code, errors) == (0, ""), who  # nothing written beside the live view, no traceback
        screen = bytes(watcher.output)
        assert screen.rfind(SHOW_CURSOR) > screen.rfind(HIDE_CURSOR) >= 0, who


# --- audit --output ---------------------------------------------------------------------------------------


def test_audit_output_writes_csv_and_json_refuses_an_existing_file_and_an_unwritable_path(
    station: Station,
) -> None:
    out = station.own_dir("auditor", "audit-out")
    trail_csv, trail_json = out / "trail.csv", out / "trail.json"
    written = station.run("auditor", "audit", "--output", str(trail_csv), "--format", "csv")
    assert written.returncode == 0, written.stderr
    assert f"written to {trail_csv}" in written.stderr
    with trail_csv.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert set(reader.fieldnames or ()) >= CJIS_FIELDS
    assert rows
    assert all(row[name] for row in rows for name in CJIS_FIELDS)
    kinds = {(row["event_type"], row["outcome"], row["user"]) for row in rows}
    assert ("ctl.footage", "ok", "root") in kinds  # the search that waited for the recordings
    as_json = station.run("auditor", "audit", "--output", str(trail_json), "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    events = json.loads(trail_json.read_text(encoding="utf-8"))
    assert all(set(event) >= CJIS_FIELDS for event in events)
    assert [e["seq"] for e in events[: len(rows)]] == [int(row["seq"]) for row in rows]

    existing = out / "existing.csv"
    existing.write_text("an earlier export\n", encoding="utf-8")
    refused = station.run("auditor", "audit", "--output", str(existing), "--format", "csv")
    assert refused.returncode == EXIT_OUTPUT, refused.stderr
    assert f"cannot write {existing}: " in one_line(refused)
    assert "exists" in refused.stderr
    assert existing.read_text(encoding="utf-8") == "an earlier export\n"
    assert sorted(p.name for p in out.iterdir()) == ["existing.csv", "trail.csv", "trail.json"]  # no temp

    unwritable = station.config.parent / "trail.csv"  # root's directory: the auditor cannot write there
    denied = station.run("auditor", "audit", "--output", str(unwritable), "--format", "csv")
    assert denied.returncode == EXIT_OUTPUT, denied.stderr
    assert one_line(denied) == f"ingestctl: error: cannot write {unwritable}: Permission denied"
    assert not unwritable.exists()
