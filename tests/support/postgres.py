"""A throw-away PostgreSQL server from Debian's binaries, for the catalog tests.

PostgreSQL refuses to run as root, so under root the cluster belongs to `nobody`. The server listens
only on a Unix socket in its own directory, so parallel runs never collide on a port.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

UNPRIVILEGED_USER = "nobody"


def find_pg_bin() -> Path | None:
    """The directory holding initdb and pg_ctl: PATH first, then Debian's versioned layout."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    # Debian installs versioned server binaries off PATH; newest version first.
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    return candidates[0].parent if candidates else None


@dataclass
class PostgresServer:
    bin_dir: Path
    base: Path
    port: int = 5432

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "socket"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", UNPRIVILEGED_USER, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)

    def start(self) -> None:
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            entry = pwd.getpwnam(UNPRIVILEGED_USER)
            for path in (self.base, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        done = self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()}")
        # fsync=off: a test cluster's durability is irrelevant and fsync dominates its run time.
        options = f"-k {self.socket_dir} -c listen_addresses='' -p {self.port} -F"
        done = self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.base / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        if done.returncode != 0:
            server_log = self.base / "server.log"
            log = server_log.read_text(errors="replace") if server_log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()} {log[-2000:]}")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)


def start_server() -> PostgresServer:
    """Start a server or skip, saying why; under CI a missing server is a failure, not a skip."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        reason = "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql package"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI installs it through .ci/system-deps)")
        pytest.skip(reason)
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(UNPRIVILEGED_USER)
        except KeyError:
            pytest.skip(f"running as root and no '{UNPRIVILEGED_USER}' user to own the test cluster")
    base = Path(tempfile.mkdtemp(prefix="ingestd-pg-"))
    base.chmod(0o755)
    server = PostgresServer(bin_dir, base)
    try:
        server.start()
    except Exception:
        server.stop()
        raise
    return server
