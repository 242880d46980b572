"""The real daemon as a subprocess, and simulated cameras that dock through a watched folder.

The daemon reports READY=1 over a real sd_notify datagram socket; the tests read its JSON log lines
and its catalog (read-only), exactly as an administrator's tools would. Each process is stopped by its
own pid in `close()`.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from ingestd.control.client import RemoteError, call
from ingestd.sdnotify import parse_notification
from store.catalog import Catalog
from tests.support.loopdev import detach_if_backed_by

T = TypeVar("T")
READY_TIMEOUT_S = 60.0
DESCRIPTOR = ".ingestd-dock.json"


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.1) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class NotifyReceiver:
    """The service manager's end of $NOTIFY_SOCKET. A thread receives every datagram as systemd does, so
    the daemon never blocks on a full queue (the kernel holds only net.unix.max_dgram_qlen, often 10)."""

    def __init__(self, path: Path) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.2)
        self._received: queue.SimpleQueue[dict[str, str]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name=f"notify {path.name}", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                datagram = self._socket.recv(4096)
            except TimeoutError:
                continue
            self._received.put(parse_notification(datagram))

    def take(self, wait: float) -> dict[str, str]:
        """Everything received since the last call, merged; waits up to `wait` s while there is none."""
        merged: dict[str, str] = {}
        try:
            merged.update(self._received.get(timeout=wait))
            while True:
                merged.update(self._received.get_nowait())
        except queue.Empty:
            pass
        return merged

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()


@dataclass
class Daemon:
    base: Path
    extra_config: str = ""
    control_dir: Path | None = None  # where the control socket lives (default: base)
    control_config: str = ""  # more [control] keys (group names), one per line
    udev: bool = False
    udev_source: str | None = "kernel"  # None: not set, the config's default (auto)
    settle_seconds: float = 0.3
    detection_config: str = ""  # more [detection] keys, one per line
    # The simulator's volumes are ext4 images, which no rule mounts unless it lists ext4.
    camera_filesystems: tuple[str, ...] = ("ext4",)
    store_root: Path | None = None
    database_url: str | None = None  # the catalog (default: a SQLite file in the state directory)
    serial_password: str = 'password = "000000"'  # the serial cameras' rule: inline, or a password_file
    wrapper: tuple[str, ...] = ()  # a command the daemon runs under (e.g. the unit's sandbox, emulated)
    process: subprocess.Popen[bytes] | None = None
    _notify: NotifyReceiver | None = None
    starts: int = 0
    last_status: str = ""

    @property
    def state_dir(self) -> Path:
        return self.base / "state"

    @property
    def docks(self) -> Path:
        return self.base / "docks"

    @property
    def store(self) -> Path:
        return self.store_root or self.base / "store"

    @property
    def config_path(self) -> Path:
        return self.base / "config.toml"

    @property
    def catalog_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'catalog.db'}"

    @property
    def control_socket(self) -> Path:
        return (self.control_dir or self.base) / "control.sock"

    @property
    def log_path(self) -> Path:
        return self.base / "daemon.log"

    def write_config(self) -> None:
        self.config_path.write_text(
            f"""
[daemon]
state_dir = "{self.state_dir}"
log_format = "json"

[catalog]
url = "{self.catalog_url}"

[store]
root = "{self.store}"
fsync_interval_mib = 1

[control]
socket = "{self.control_socket}"
{self.control_config}

[detection]
udev = {str(self.udev).lower()}
{f'udev_source = "{self.udev_source}"' if self.udev_source else ""}
settle_seconds = {self.settle_seconds}
watch_folders = ["{self.docks}"]
{self.detection_config}

[[camera]]
match = {{ SUBSYSTEM = "folder", ZFY_TRANSPORT = "serial" }}
driver = "serial"
{self.serial_password}
filesystems = {json.dumps(list(self.camera_filesystems))}

[[camera]]
match = {{ SUBSYSTEM = "block", LOOP_BACKING_FILE = "*-camera.img" }}
driver = "mass-storage"
filesystems = {json.dumps(list(self.camera_filesystems))}
{self.extra_config}
""",
            encoding="utf-8",
        )

    def start(self, env: Mapping[str, str] | None = None) -> str:
        """Start the daemon (with `env` added to ours) and wait for READY=1; returns its STATUS text."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.write_config()
        notify_path = self.base / f"notify-{self.starts}.sock"
        self._notify = NotifyReceiver(notify_path)
        added = {**(env or {}), "NOTIFY_SOCKET": str(notify_path), "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.wrapper, sys.executable, "-m", "ingestd", "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **added},
            )
        self.starts += 1
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited {self.process.returncode}:\n{self.log_text()[-4000:]}")
            fields = self.notifications()
            if fields.get("READY") == "1":
                return fields.get("STATUS", "")
        raise AssertionError(f"no READY=1 within {READY_TIMEOUT_S}s:\n{self.log_text()[-4000:]}")

    def run_refused(self, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`ingestd run` on this station's config, in the foreground and without a notify socket, for a
        start that must be refused: returns when it exits (or fails the test after 60 s)."""
        base = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        return subprocess.run(
            [sys.executable, "-m", "ingestd", "run", "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env={**base, **(env or {})},
        )

    def notifications(self) -> dict[str, str]:
        """Drain what the daemon sent since the last call; `last_status` keeps the newest STATUS."""
        assert self._notify is not None
        merged = self._notify.take(wait=0.2)
        if "STATUS" in merged:
            self.last_status = merged["STATUS"]
        return merged

    def status(self) -> str:
        self.notifications()
        return self.last_status

    def watchdog_polls(self, seconds: float) -> int:
        """For `seconds`, poll the notify socket (each poll waits up to 0.2 s); how many polls found
        WATCHDOG=1 among what arrived since the one before."""
        found = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.notifications().get("WATCHDOG") == "1":
                found += 1
        return found

    def stop(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self._close_notify()
        return code

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)
        self._close_notify()

    def _close_notify(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.log_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (name is None or record.get("event") == name):
                found.append(record)
        return found

    def catalog(self) -> Catalog:
        return Catalog.open(self.catalog_url, read_only=True)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._close_notify()


@dataclass
class SimulatedCamera:
    """A camera simulator on a real pty; docking moves its volume into the watched folder atomically."""

    base: Path
    serial: str
    officer_no: str = "000101"
    officer_name: str = "张三"
    drift_s: float = 0.0
    battery: int = 80
    files: int = 3
    size_bytes: int = 256 * 1024
    password: str = "000000"
    extra_args: list[str] = field(default_factory=list)
    image: bool = False  # serve the volume as an ext4 image on a loop device (root)
    process: subprocess.Popen[bytes] | None = None
    tty: str | None = None
    block: str | None = None

    @property
    def staging(self) -> Path:
        return self.base / "staging" / self.serial

    def start(self) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)
        start = (datetime.now(UTC) - timedelta(hours=6)).isoformat()
        args = [
            sys.executable,
            "-m",
            "drivers.simulator",
            "--serial",
            self.serial,
            "--officer-no",
            self.officer_no,
            "--officer-name",
            self.officer_name,
            "--drift",
            str(self.drift_s),
            "--battery",
            str(self.battery),
            "--password",
            self.password,
            "--volume",
            str(self.staging),
            "--generate",
            str(self.files),
            "--size-bytes",
            str(self.size_bytes),
            "--start",
            start,
            "--seed",
            str(int(self.serial[-4:])),  # distinct content per camera, so nothing dedups by accident
            *(["--image", str(self.base / f"{self.serial}-sim.img")] if self.image else []),
            *self.extra_args,
        ]
        with (self.base / f"simulator-{self.serial}.log").open("ab") as log:
            self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"simulator {self.serial} exited {self.process.wait()}")
        ready = json.loads(line)
        self.tty = str(ready["tty"])
        self.block = ready.get("block")
        usb_serial = str(ready.get("usb_serial") or self.serial)
        descriptor = {
            "tty": self.tty,
            "block": self.block,
            "properties": {"ZFY_TRANSPORT": "serial", "ID_SERIAL_SHORT": usb_serial},
        }
        (self.staging / DESCRIPTOR).write_text(json.dumps(descriptor), encoding="utf-8")

    def recordings(self, where: Path | None = None) -> list[Path]:
        root = where or self.staging
        return sorted(
            p
            for p in root.rglob("*")
            if p.is_file()
            and not p.is_symlink()
            and p.name != DESCRIPTOR
            and p.suffix.lower() in (".mp4", ".mov")
        )

    def dock(self, docks: Path) -> Path:
        docks.mkdir(parents=True, exist_ok=True)
        target = docks / self.serial
        self.staging.rename(target)
        return target

    def undock(self, docks: Path) -> None:
        """Take the camera out of the dock: its volume leaves the watched folder, intact."""
        self.staging.parent.mkdir(parents=True, exist_ok=True)
        (docks / self.serial).rename(self.staging)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def close(self) -> None:
        # SIGTERM lets the simulator detach its loop device; a camera the test already killed left it behind.
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.block is not None:
            detach_if_backed_by(self.block, self.base / f"{self.serial}-sim.img")
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


def stored_recordings(daemon: Daemon, serial: str, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Wait until the daemon lists `count` recordings of camera `serial` (asked as root); return them."""

    def listed() -> list[dict[str, Any]] | None:
        try:
            answer = call(daemon.control_socket, "footage", {"device": serial})
        except RemoteError:
            return None  # the camera is not in the catalog yet
        found: list[dict[str, Any]] = answer["recordings"]
        return found if len(found) == count else None

    return wait_for(f"{count} recordings of {serial}", listed, timeout=timeout)


def iter_rows(catalog: Catalog, statement: Any) -> Iterator[Any]:
    with catalog.transaction() as db:
        yield from db.execute(statement).all()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
