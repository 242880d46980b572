"""Viewing and copying footage (000 art. 16; 002 art. 16; 004 art. 20(二)) against the real daemon as a
subprocess: `ingestctl view` and `ingestctl copy` run as real OS users in the clerk, approver, auditor and
viewer groups. Without a valid approval both are refused and the refusal is in the audit trail; with one,
`view` pipes exactly the stored bytes to another process although the caller cannot read the store, and
`copy` writes the caller's files, whose SHA256SUMS `sha256sum -c` accepts.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from store.catalog import Catalog
from store.models import Approval, AuditEvent, Recording
from tests.support import records as seed
from tests.support.osusers import BOOTSTRAP, OsUsers
from tests.system.harness import Daemon
from tests.system.test_ctl_records import seeded

ROLES = ("clerk", "approver", "auditor", "viewer")


@dataclass
class Footage:
    """The daemon on a seeded catalog (three recordings, one approval that has expired) and an OS user
    for each role. `data` is what each recording's stored object holds."""

    daemon: Daemon
    config: Path  # a copy every role user can read
    users: dict[str, str]
    ids: list[int]
    data: dict[int, bytes]
    expired_approval: int

    def run(self, role: str, *args: str, **options: Any) -> subprocess.CompletedProcess[bytes]:
        """ingestctl as the role's OS user; bytes out, so footage on stdout arrives unchanged."""
        options.setdefault("stdout", subprocess.PIPE)
        options.setdefault("stderr", subprocess.PIPE)
        return subprocess.run(self.argv(role, *args), check=False, timeout=60, **options)

    def argv(self, role: str, *args: str) -> list[str]:
        return [sys.executable, "-c", BOOTSTRAP, self.users[role], *args, "--config", str(self.config)]

    def approve(self, *recordings: int, grantee: str = "clerk") -> int:
        """An approval for the role user `grantee`, by the approver."""
        args = [arg for rid in recordings for arg in ("--recording", str(rid))]
        args += ["--for", self.users[grantee]]
        done = self.run("approver", "approve", "--purpose", "复核", "--expires-in", "1h", *args, "--json")
        assert done.returncode == 0, done.stderr
        return int(json.loads(done.stdout)["id"])

    def home(self, role: str, name: str) -> Path:
        """A new directory of the role user's own (and their group's: useradd --user-group names it alike)."""
        path = self.config.parent / name
        path.mkdir()
        shutil.chown(path, self.users[role], self.users[role])
        return path

    def audit(self, action: str) -> list[AuditEvent]:
        return self._read(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq))

    def catalog_sha256(self, recording: int) -> str:
        [digest] = self._read(select(Recording.sha256).where(Recording.id == recording))
        return str(digest)

    def _read(self, query: Any) -> list[Any]:
        catalog = self.daemon.catalog()
        try:
            with catalog.transaction() as session:
                return list(session.scalars(query))
        finally:
            catalog.close()


@pytest.fixture
def footage(daemon: Daemon, shared_dir: Path, os_users: OsUsers) -> Footage:
    sock = os_users.group("sock")
    groups = {role: os_users.group(role[:3]) for role in ROLES}
    users = {role: os_users.user(role[:2], [group, sock]) for role, group in groups.items()}
    daemon.control_dir = shared_dir
    daemon.control_config = "\n".join(
        [f'socket_group = "{sock}"', 'admin_group = ""'] + [f'{r}_group = "{g}"' for r, g in groups.items()]
    )
    ids = seeded(daemon)["recordings"]
    now = datetime.now(UTC)
    catalog = Catalog.open(daemon.catalog_url)
    try:
        with catalog.transaction() as session:
            expired = Approval(
                approver="wang.approver",
                purpose="复核",
                scope_recording_ids=ids,
                allows_confidential=False,
                created_at=now - timedelta(days=2),
                expires_at=now - timedelta(days=1),
            )
            session.add(expired)
            session.flush()
            expired_id = expired.id
            sizes = dict(session.execute(select(Recording.id, Recording.size)).tuples().all())
    finally:
        catalog.close()
    daemon.start()
    config = shared_dir / "config.toml"
    shutil.copyfile(daemon.config_path, config)
    config.chmod(0o644)
    data = dict(zip(ids, [seed.payload("old"), seed.payload("shared"), seed.payload("shared")], strict=True))
    assert {rid: len(content) for rid, content in data.items()} == sizes
    return Footage(daemon, config, users, ids, data, expired_id)


def one_error_line(done: subprocess.CompletedProcess[bytes]) -> str:
    assert done.stdout == b""
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, done.stderr.decode()
    assert "Traceback" not in lines[0]
    return lines[0]


def test_view_and_copy_without_a_valid_approval_are_refused_and_each_refusal_is_audited(
    footage: Footage,
) -> None:
    first, second, _ = footage.ids
    only_first = footage.approve(first)
    copies = footage.home("clerk", "copies")
    refusals = {
        "missing": (999, second),
        "expired": (footage.expired_approval, second),
        "out-of-scope": (only_first, second),
    }
    for code, (approval, recording) in refusals.items():
        viewed = footage.run("clerk", "view", "--approval", str(approval), str(recording))
        assert viewed.returncode == 14, viewed.stderr
        assert f"access refused ({code})" in one_error_line(viewed)
        dest = copies / code
        copied = footage.run(
            "clerk", "copy", "--approval", str(approval), "--recording", str(recording), str(dest)
        )
        assert copied.returncode == 14, copied.stderr
        assert f"access refused ({code})" in one_error_line(copied)
        assert not dest.exists()
    assert list(copies.iterdir()) == []

    clerk = footage.users["clerk"]
    for action in ("footage.view", "footage.copy"):
        refused = footage.audit(action)
        assert [(e.outcome, e.details["code"], e.actor_user) for e in refused] == [
            ("refused", code, clerk) for code in refusals
        ], action
        assert refused[1].details["approval"] == footage.expired_approval
    for action in ("ctl.view", "ctl.copy"):
        assert [(e.outcome, e.actor_user) for e in footage.audit(action)] == [("error", clerk)] * 3


def test_an_approved_view_pipes_exactly_the_stored_bytes_though_the_caller_cannot_read_the_store(
    footage: Footage, tmp_path: Path
) -> None:
    first, second, _ = footage.ids
    approval = str(footage.approve(first, second))
    clerk = footage.users["clerk"]
    blocked = subprocess.run(["ls", str(footage.daemon.store)], user=clerk, capture_output=True, check=False)
    assert blocked.returncode != 0  # no way to the store but the file the daemon hands over

    # | sha256sum, as `| mpv -` would read it: a pipe between two processes.
    viewer = subprocess.Popen(
        footage.argv("clerk", "view", "--approval", approval, str(first)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert viewer.stdout is not None
    summed = subprocess.run(["sha256sum"], stdin=viewer.stdout, capture_output=True, text=True, check=True)
    viewer.stdout.close()
    assert viewer.wait(timeout=60) == 0, viewer.stderr.read() if viewer.stderr else ""
    assert summed.stdout.split()[0] == footage.catalog_sha256(first)
    assert summed.stdout.split()[0] == hashlib.sha256(footage.data[first]).hexdigest()

    for_auditor = str(footage.approve(second, grantee="auditor"))
    piped = footage.run("auditor", "view", "--approval", for_auditor, str(second))
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == footage.data[second]

    saved = footage.home("clerk", "saved") / "r.mp4"
    written = footage.run("clerk", "view", "--approval", approval, str(first), "--output", str(saved))
    assert written.returncode == 0, written.stderr
    assert saved.read_bytes() == footage.data[first]
    assert written.stdout.decode() == (
        f"wrote recording {first} to {saved}: {len(footage.data[first])} bytes, "
        f"SHA-256 {hashlib.sha256(footage.data[first]).hexdigest()} (matches the catalog)\n"
    )
    assert (saved.stat().st_mode & 0o777, saved.stat().st_uid) == (0o600, pwd.getpwnam(clerk).pw_uid)
    again = footage.run("clerk", "view", "--approval", approval, str(first), "--output", str(saved))
    assert again.returncode == 15
    assert "File exists" in one_error_line(again)
    assert saved.read_bytes() == footage.data[first]

    primary, secondary = pty.openpty()
    try:
        to_terminal = footage.run("clerk", "view", "--approval", approval, str(first), stdout=secondary)
        os.set_blocking(primary, False)
        with pytest.raises(BlockingIOError):
            os.read(primary, 1024)  # not a byte reached the terminal
    finally:
        os.close(secondary)
        os.close(primary)
    assert to_terminal.returncode == 2
    assert to_terminal.stderr.decode().splitlines() == [
        "ingestctl: error: refusing to write video to a terminal: use --output FILE or a pipe"
    ]
    not_a_number = footage.run("clerk", "view", "--approval", approval, "forty-two")
    assert not_a_number.returncode == 2
    assert b"'forty-two' is not a valid integer" in not_a_number.stderr  # click's usage error
    assert b"Traceback" not in not_a_number.stderr
    denied = footage.run("viewer", "view", "--approval", approval, str(first))
    assert denied.returncode == 13
    assert "permission denied" in one_error_line(denied)

    viewed = [(e.outcome, e.actor_user, e.details["recording"]) for e in footage.audit("footage.view")]
    auditor = footage.users["auditor"]
    assert viewed == [("ok", clerk, first), ("ok", auditor, second), ("ok", clerk, first)]
    assert ("denied", footage.users["viewer"]) in [
        (e.outcome, e.actor_user) for e in footage.audit("ctl.view")
    ]


def test_an_approved_copy_is_the_callers_and_its_sums_verify(footage: Footage) -> None:
    first, second, third = footage.ids
    approval = str(footage.approve(first, second, third))
    clerk = footage.users["clerk"]
    entry = pwd.getpwnam(clerk)
    dest = footage.home("clerk", "copies") / "for court"

    done = footage.run("clerk", "copy", "--approval", approval, str(dest))
    assert done.returncode == 0, done.stderr
    assert b"sha256sum -c SHA256SUMS" in done.stdout
    files = sorted(dest.iterdir())
    assert len(files) == 4
    for path in [dest, *files]:
        assert (path.stat().st_uid, path.stat().st_gid) == (entry.pw_uid, entry.pw_gid), path
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o444, path
    for rid in footage.ids:
        [copied] = dest.glob(f"*_r{rid}.mp4")
        assert copied.read_bytes() == footage.data[rid]
    checked = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=dest, user=clerk, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count(": OK") == 3

    not_theirs = footage.home("auditor", "not-the-clerks")
    auditor = footage.run("auditor", "copy", "--approval", approval, str(not_theirs / "auditor"))
    assert auditor.returncode == 13  # a role that may not copy, even into a directory of their own
    assert list(not_theirs.iterdir()) == []
    elsewhere = footage.run("clerk", "copy", "--approval", approval, str(not_theirs / "x"))
    assert elsewhere.returncode == 15
    assert "Permission denied" in one_error_line(elsewhere)  # ingestctl makes DEST, with the clerk's rights
    assert list(not_theirs.iterdir()) == []
    exists = footage.run("clerk", "copy", "--approval", approval, str(dest))
    assert exists.returncode == 15
    assert "already exists" in one_error_line(exists)

    [event] = [e for e in footage.audit("footage.copy") if e.outcome == "ok"]
    assert (event.actor_user, event.details["destination"]) == (clerk, str(dest))
    assert event.details["recordings"] == footage.ids


def test_an_approval_serves_only_its_grantee_never_its_approver_and_never_grows(footage: Footage) -> None:
    first, second, _ = footage.ids
    tagged = footage.run("clerk", "tag", str(first), "--case-id", "C-9")
    assert tagged.returncode == 0, tagged.stderr
    done = footage.run(
        "approver",
        "approve",
        "--purpose",
        "复核",
        "--case",
        "C-9",
        "--for",
        footage.users["clerk"],
        "--expires-in",
        "1h",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    approval = json.loads(done.stdout)
    assert approval["scope_recording_ids"] == [first]
    for_clerk = str(approval["id"])

    # The clerk tags more footage into the case: the approval does not follow.
    assert footage.run("clerk", "tag", str(second), "--case-id", "C-9").returncode == 0
    grown = footage.run("clerk", "view", "--approval", for_clerk, str(second))
    assert grown.returncode == 14
    assert "access refused (out-of-scope)" in one_error_line(grown)
    assert footage.run("clerk", "view", "--approval", for_clerk, str(first)).returncode == 0

    other = footage.run("auditor", "view", "--approval", for_clerk, str(first))
    assert other.returncode == 14
    assert "access refused (not-grantee)" in one_error_line(other)
    own = footage.run("approver", "view", "--approval", for_clerk, str(first))
    assert own.returncode == 14
    assert "access refused (own-approval)" in one_error_line(own)
    self_granted = footage.run(
        "approver",
        "approve",
        "--purpose",
        "x",
        "--recording",
        str(first),
        "--expires-in",
        "1h",
        "--for",
        footage.users["approver"],
    )
    assert self_granted.returncode == 2
    assert "cannot approve their own access" in one_error_line(self_granted)

    refused = [
        (e.actor_user, e.details["code"]) for e in footage.audit("footage.view") if e.outcome == "refused"
    ]
    assert refused == [
        (footage.users["clerk"], "out-of-scope"),
        (footage.users["auditor"], "not-grantee"),
        (footage.users["approver"], "own-approval"),
    ]


def test_an_approval_that_leaves_confidential_recordings_out_says_so_when_it_is_made(
    footage: Footage,
) -> None:
    first, second, third = footage.ids
    tagged = footage.run("approver", "tag", str(third), "--confidentiality", "privacy")
    assert tagged.returncode == 0, tagged.stderr
    base = ["approve", "--purpose", "复核", "--expires-in", "1h", "--for", footage.users["clerk"]]
    scope = ["--recording", str(first), "--recording", str(third)]
    warned = footage.run("approver", *base, *scope)
    assert warned.returncode == 0, warned.stderr
    (warning,) = warned.stderr.decode().splitlines()
    assert warning == (
        f"ingestctl: warning: recording(s) {third} in scope are confidential and this approval does not "
        "cover them (they will be refused); approve again with --allow-confidential if it should"
    )
    covered = footage.run("approver", *base, *scope, "--allow-confidential", "--json")
    assert covered.returncode == 0, covered.stderr
    assert covered.stderr == b""
    assert json.loads(covered.stdout)["confidential_not_covered"] == []
    plain = footage.run("approver", *base, "--recording", str(second))
    assert plain.stderr == b""
