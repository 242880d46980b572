"""A throw-away single-node Ceph from Debian's packages, for the vault tests.

One monitor, one memstore OSD and radosgw on 127.0.0.1, all under one temporary directory, without
cephx (loopback only). Started once per test session; every process is stopped by its own pid and the
directory removed. Where the packages are missing the tests skip and say so; under CI that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config as BotoConfig

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

PROGRAMS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "monmaptool", "ceph-authtool")
PACKAGES = "ceph-mon ceph-osd radosgw ceph-common"
START_TIMEOUT = 90.0
MEMSTORE_BYTES = 1024 * 1024 * 1024  # RAM is only used as objects are written


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class S3User:
    uid: str
    access_key_id: str
    secret_access_key: str


@dataclass
class CephCluster:
    base: Path
    fsid: str = field(default_factory=lambda: str(uuid.uuid4()))
    mon_port: int = field(default_factory=free_port)
    rgw_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    user: S3User | None = None
    memstore_bytes: int = MEMSTORE_BYTES  # the OSD keeps every object in RAM, up to this

    @property
    def conf(self) -> Path:
        return self.base / "ceph.conf"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.rgw_port}"

    def _write_conf(self) -> None:
        modes = "\n".join(
            f"{name} = crc secure"
            for name in (
                "ms_cluster_mode",
                "ms_service_mode",
                "ms_client_mode",
                "ms_mon_cluster_mode",
                "ms_mon_service_mode",
                "ms_mon_client_mode",
            )
        )
        self.conf.write_text(
            f"""[global]
fsid = {self.fsid}
mon host = v2:127.0.0.1:{self.mon_port}
public addr = 127.0.0.1
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
{modes}
osd objectstore = memstore
memstore device bytes = {self.memstore_bytes}
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
mon allow pool size one = true
mon allow pool delete = true
osd crush chooseleaf type = 0
run dir = {self.base}/run
admin socket = {self.base}/run/$name.asok
log file = {self.base}/log/$name.log
pid file = {self.base}/run/$name.pid
keyring = {self.base}/keyring
osd data = {self.base}/$name
mon data = {self.base}/$name
rgw data = {self.base}/$name

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{self.rgw_port}
rgw dns name = 127.0.0.1
"""
        )

    def run(self, *argv: str, timeout: float = 60.0) -> str:
        done = subprocess.run(
            [*argv, "-c", str(self.conf)], capture_output=True, text=True, check=False, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return done.stdout

    def _daemon(self, *argv: str) -> None:
        """Start a daemon in the foreground (-f) in its own session, so it is stopped by its own pid."""
        name = argv[0]
        with (self.base / "log" / f"{name}.out").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [*argv, "-f", "-c", str(self.conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self) -> None:
        for sub in ("run", "log", "mon.a", "osd.0", "client.rgw"):
            (self.base / sub).mkdir(parents=True)
        self._write_conf()
        monmap = str(self.base / "monmap")
        self.run("ceph-authtool", "--create-keyring", str(self.base / "keyring"), "--gen-key", "-n", "mon.")
        subprocess.run(
            [
                "monmaptool",
                "--create",
                "--fsid",
                self.fsid,
                "--addv",
                "a",
                f"[v2:127.0.0.1:{self.mon_port}]",
                monmap,
            ],
            capture_output=True,
            check=True,
            timeout=30,
        )
        self.run("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap)
        self._daemon("ceph-mon", "-i", "a")
        osd_uuid = str(uuid.uuid4())
        osd_id = self.run("ceph", "osd", "new", osd_uuid).strip()
        self.run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        self._daemon("ceph-osd", "-i", osd_id)
        self._wait(lambda: '"num_up_osds":1' in self.run("ceph", "osd", "stat", "-f", "json"), "the OSD")
        self._daemon("radosgw", "-n", "client.rgw")
        self._wait(self._rgw_answers, "radosgw")
        self.user = self._create_user("ingestd-station")

    def kill_rgw(self) -> None:
        """SIGKILL radosgw (its own pid), as a crash or a power cut of the vault's gateway would."""
        process = self.processes.pop("radosgw")
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def start_rgw(self) -> None:
        """Start radosgw again on the same port; the OSD kept every object and open upload."""
        self._daemon("radosgw", "-n", "client.rgw")
        self._wait(self._rgw_answers, "radosgw")

    def _rgw_answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.rgw_port), timeout=1):
                return True
        except OSError:
            return False

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        """Poll `ready` until it holds; a daemon that exits meanwhile fails the start at once."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode} (see {self.base}/log)")
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                if ready():
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{what} not up after {START_TIMEOUT:.0f} s")

    def _create_user(self, uid: str) -> S3User:
        access = uuid.uuid4().hex[:20].upper()
        secret = uuid.uuid4().hex + uuid.uuid4().hex
        self.run(
            "radosgw-admin",
            "user",
            "create",
            f"--uid={uid}",
            f"--display-name={uid}",
            f"--access-key={access}",
            f"--secret={secret}",
        )
        return S3User(uid, access, secret)

    def client(self) -> S3Client:
        """A plain boto3 client as the station's user: the tests' view of what the server allows."""
        assert self.user is not None
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.user.access_key_id,
            aws_secret_access_key=self.user.secret_access_key,
            config=BotoConfig(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def create_bucket(self, *, object_lock: bool) -> str:
        """A new bucket owned by the station's user, with or without Object Lock."""
        name = f"t-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
        return name

    def stop(self) -> None:
        for process in reversed(self.processes.values()):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        self.processes.clear()
        shutil.rmtree(self.base, ignore_errors=True)


def missing_programs() -> list[str]:
    return [program for program in PROGRAMS if shutil.which(program) is None]


@contextlib.contextmanager
def running_cluster() -> Iterator[CephCluster]:
    """A started cluster, or a skip naming what is missing; under CI a missing package fails."""
    missing = missing_programs()
    if missing:
        reason = f"Ceph programs not found ({', '.join(missing)}): install Debian's {PACKAGES}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI installs them through .ci/system-deps)")
        pytest.skip(reason)
    if os.geteuid() != 0:
        pytest.skip("the test Ceph cluster runs its daemons as root")
    cluster = CephCluster(Path(tempfile.mkdtemp(prefix="ingestd-ceph-")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def ceph_cluster() -> Iterator[CephCluster]:
    """One single-node Ceph with radosgw for the whole test session."""
    with running_cluster() as cluster:
        yield cluster
