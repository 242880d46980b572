"""Real OS users and groups for role tests, and running `ingestctl` as one of them.

Users and groups get a unique prefix and are removed by name at teardown. `ingestctl` runs in a child
process that imports everything while still root (the interpreter may live where other users cannot
read), then drops to the user's uid, gid and supplementary groups before `main()`, so the daemon sees the
user's own credentials through SO_PEERCRED.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
        [sys.executable, "-c", BOOTSTRAP, user, *args],
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


def _closed_ancestor(path: Path) -> Path | None:
    """The highest directory above `path` that other users cannot enter (root's home, 0700), or None."""
    for ancestor in reversed(path.parents):
        if not ancestor.stat().st_mode & stat.S_IXOTH:
            return ancestor
    return None


def run_python_as(
    user: str, *args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 600.0
) -> subprocess.CompletedProcess[str]:
    """Run this interpreter with `args` as `user`, with every capability dropped.

    If the interpreter lives below a directory others cannot enter, the child gets a private mount
    namespace in which only that directory is replaced by an empty tmpfs holding the interpreter's tree;
    the namespace, and so the change, ends with the child."""
    install = Path(sys.base_prefix).resolve()
    drop = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--inh-caps=-all"]
    drop += ["--bounding-set=-all", sys.executable, *args]
    closed = _closed_ancestor(install / "bin")
    if closed is None:
        argv = drop
    else:
        tree = closed / install.relative_to(closed).parts[0]  # the child of `closed` holding the install
        script = (
            'stash=$(mktemp -d) && mount --bind "$1" "$stash" && mount -t tmpfs -o mode=0755 tmpfs "$2" '
            '&& mkdir "$1" && mount --move "$stash" "$1" && rmdir "$stash" && shift 2 && exec "$@"'
        )
        argv = ["unshare", "--mount", "--propagation=private", "sh", "-c", script, "sh", str(tree)]
        argv += [str(closed), *drop]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )
