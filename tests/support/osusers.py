"""Real OS users and groups for role tests, and running `ingestctl` as one of them.

Users and groups get a unique prefix and are removed by name at teardown. `ingestctl` runs in a child
process that imports everything while still root, then drops to the user's uid, gid and supplementary
groups before `main()`, so the daemon sees the user's own credentials through SO_PEERCRED. Children run as
a user see the interpreter, the venv and the checkout even below a directory others cannot enter (root's
home, a 0700 temp dir): see `_reachable`.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]

BOOTSTRAP = """
import os, pwd, sys
import ingestd.ctl, ingestd.ctl.read, ingestd.control.client, ingestd.control.queries
import click, click._textwrap, csv, json, encodings.idna
import sqlite3, sqlalchemy.dialects.sqlite.pysqlite  # the direct catalog read, daemon down
import rich.console, rich.table, rich.live, rich.progress_bar, rich.text
import importlib.readers, alembic.script, ingestd.verify  # verify: the schema check reads the migrations
user = sys.argv.pop(1)
entry = pwd.getpwnam(user)
os.setgroups(os.getgrouplist(user, entry.pw_gid))
os.setgid(entry.pw_gid)
os.setuid(entry.pw_uid)
os.environ["HOME"] = "/"
sys.argv[0] = "ingestctl"
ingestd.ctl.main()
"""


def can_manage_users() -> str | None:
    """None when users can be created here, else why not (the skip reason)."""
    if os.geteuid() != 0:
        return "needs root to create OS users and groups"
    for tool in ("useradd", "groupadd", "userdel", "groupdel"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@dataclass
class OsUsers:
    prefix: str = field(default_factory=lambda: f"ict{secrets.token_hex(3)}")
    users: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def group(self, suffix: str) -> str:
        name = f"{self.prefix}{suffix}"
        subprocess.run(["groupadd", name], check=True, capture_output=True)
        self.groups.append(name)
        return name

    def user(self, suffix: str, groups: Sequence[str]) -> str:
        name = f"{self.prefix}{suffix}"
        argv = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group"]
        if groups:
            argv += ["--groups", ",".join(groups)]
        subprocess.run([*argv, name], check=True, capture_output=True)
        self.users.append(name)
        self.groups.append(name)  # its own group, from --user-group; userdel removes it too
        return name

    def remove(self) -> None:
        for name in self.users:
            subprocess.run(["userdel", name], check=False, capture_output=True)
        for name in self.groups:
            subprocess.run(["groupdel", name], check=False, capture_output=True)


def run_ctl_as(
    user: str, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _reachable([sys.executable, "-c", BOOTSTRAP, user, *args], Path.cwd()),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def created(users: OsUsers) -> Iterator[OsUsers]:
    try:
        yield users
    finally:
        users.remove()


def _closed_ancestors(path: Path) -> list[Path]:
    """The directories above `path` that other users cannot enter (root's home, 0700), highest first."""
    return [a for a in reversed(path.parents) if not a.stat().st_mode & stat.S_IXOTH]


def _reachable(argv: Sequence[str], cwd: Path) -> list[str]:
    """`argv`, run where a user can reach the interpreter install, the venv, the checkout and `cwd`.

    A child run as a user still reads them after the drop (the migrations, pytest's rootdir). If any lies
    below a directory others cannot enter, the child gets a private mount namespace in which each such
    directory, highest first, is covered by an empty tmpfs holding only the subtrees those paths need; the
    namespace, and so the change, ends with the child. Nothing on disk changes mode or owner."""
    cwd = cwd.resolve()
    needed = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), CHECKOUT, cwd}
    keep: dict[Path, set[str]] = {}  # closed directory -> names of its children to bring back
    for path in needed:
        for closed in _closed_ancestors(path):
            keep.setdefault(closed, set()).add(path.relative_to(closed).parts[0])
    if not keep:
        return list(argv)
    q = shlex.quote
    # Each subtree waits in a private tmpfs while its parent is covered, then moves back beneath it. One
    # command a line: `set -e` would not stop at a failure inside an `&&` list.
    # The stash lives in /run, never below a directory this script covers ($TMPDIR might be).
    lines = [
        "set -e",
        "stash=$(mktemp -d -p /run)",
        'trap \'umount "$stash" 2>/dev/null || true; rmdir "$stash" || true\' EXIT',
        'mount -t tmpfs -o mode=0700 tmpfs "$stash"',
    ]
    for closed in sorted(keep, key=lambda path: len(path.parts)):
        trees = [q(str(closed / name)) for name in sorted(keep[closed])]
        for i, tree in enumerate(trees):
            lines += [f'mkdir "$stash/{i}"', f'mount --rbind {tree} "$stash/{i}"']
        lines.append(f"mount -t tmpfs -o mode=0755 tmpfs {q(str(closed))}")
        for i, tree in enumerate(trees):
            lines += [f"mkdir {tree}", f'mount --move "$stash/{i}" {tree}', f'rmdir "$stash/{i}"']
    lines += ['umount "$stash"', 'rmdir "$stash"', "trap - EXIT", f"cd {q(str(cwd))}", 'exec "$@"']
    script = "\n".join(lines)
    return ["unshare", "--mount", "--propagation=private", "sh", "-c", script, "sh", *argv]


def run_python_as(
    user: str, *args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 600.0
) -> subprocess.CompletedProcess[str]:
    """Run this interpreter with `args` as `user`, with every capability dropped (see `_reachable`)."""
    drop = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--inh-caps=-all"]
    drop += ["--bounding-set=-all", sys.executable, *args]
    return subprocess.run(
        _reachable(drop, cwd),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )
