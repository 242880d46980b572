"""`ingestd demo`: the real daemon on a temporary state directory, with simulated cameras docking.

Two serial cameras are served by the simulator on real ptys and dock through a watched folder. Where
this process may attach loop devices (root), a third camera is a filesystem image attached to a loop
device, which the daemon sees as a real kernel uevent; otherwise it docks through the folder too.
The demo shows live progress from the catalog, then a summary and a full `verify`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console, RenderableType
from rich.live import Live
from sqlalchemy import select

from ingestd.config import load_config
from ingestd.display import problem_line, styled, table
from ingestd.docking.folders import DESCRIPTOR
from ingestd.errors import IngestdError
from ingestd.sdnotify import parse_notification
from ingestd.services import Services
from ingestd.verify import verify_all
from store.catalog import Catalog
from store.models import Camera, Dock, DockSession

READY_TIMEOUT_S = 60
INGEST_TIMEOUT_S = 300
MIB = 1024 * 1024


class DemoError(IngestdError):
    template = "demo: {detail}"


@dataclass(frozen=True)
class DemoCamera:
    serial: str
    officer_no: str
    officer_name: str
    drift_s: float
    battery: int


CAMERAS = (
    DemoCamera("ZFY0001", "000101", "张三", 3.5, 82),
    DemoCamera("ZFY0002", "000102", "李四", -120.25, 47),
    DemoCamera("ZFY0003", "000103", "王五", 0.0, 100),
)


def loop_devices_usable() -> bool:
    return (
        os.geteuid() == 0
        and Path("/dev/loop-control").exists()
        and shutil.which("losetup") is not None
        and shutil.which("mkfs.ext4") is not None
    )


def write_config(base: Path, *, use_loop: bool) -> Path:
    docks = base / "docks"
    text = f"""
[daemon]
state_dir = "{base / "state"}"
log_format = "json"

[catalog]
url = "sqlite:///{base / "state" / "catalog.db"}"

[store]
root = "{base / "store"}"

[control]
socket = "{base / "control.sock"}"

[detection]
udev = {str(use_loop).lower()}
udev_source = "kernel"
settle_seconds = 0.5
watch_folders = ["{docks}"]

[[camera]]
match = {{ SUBSYSTEM = "folder", ZFY_TRANSPORT = "serial" }}
driver = "serial"
password = "000000"

[[camera]]
match = {{ SUBSYSTEM = "block", LOOP_BACKING_FILE = "{base}/*.img" }}
driver = "mass-storage"
filesystems = ["ext4"]  # the simulated card is an ext4 image; a real dock keeps the vfat/exfat default
"""
    path = base / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


@contextlib.contextmanager
def notify_socket(base: Path) -> Iterator[socket.socket]:
    """A real sd_notify endpoint, so the demo waits for READY=1 exactly as systemd would."""
    path = base / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield sock
    finally:
        sock.close()


def wait_ready(sock: socket.socket, daemon: subprocess.Popen[bytes]) -> str:
    sock.settimeout(0.5)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise DemoError(detail=f"the daemon exited with {daemon.returncode} before READY")
        try:
            fields = parse_notification(sock.recv(4096))
        except TimeoutError:
            continue
        if fields.get("READY") == "1":
            return fields.get("STATUS", "")
    raise DemoError(detail=f"no READY=1 from the daemon within {READY_TIMEOUT_S}s")


def start_simulator(
    camera: DemoCamera, volume: Path, files: int, size: int, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    start = (datetime.now(UTC) - timedelta(hours=9)).isoformat()
    args = [
        sys.executable,
        "-m",
        "drivers.simulator",
        "--serial",
        camera.serial,
        "--officer-no",
        camera.officer_no,
        "--officer-name",
        camera.officer_name,
        "--drift",
        str(camera.drift_s),
        "--battery",
        str(camera.battery),
        "--volume",
        str(volume),
        "--generate",
        str(files),
        "--size-bytes",
        str(size),
        "--start",
        start,
        "--seed",
        camera.serial[-1],
    ]
    with log.open("wb") as stderr:
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr)
    line = process.stdout.readline() if process.stdout is not None else b""
    if not line:
        raise DemoError(detail=f"simulator for {camera.serial} exited with {process.wait()}; see {log}")
    return process, str(json.loads(line)["tty"])


def dock_folder(
    base: Path, camera: DemoCamera, files: int, size: int
) -> tuple[subprocess.Popen[bytes], Path]:
    staging = base / "staging" / camera.serial
    staging.mkdir(parents=True)
    process, tty = start_simulator(camera, staging, files, size, base / f"simulator-{camera.serial}.log")
    descriptor = {"tty": tty, "properties": {"ZFY_TRANSPORT": "serial", "ID_SERIAL_SHORT": camera.serial}}
    (staging / DESCRIPTOR).write_text(json.dumps(descriptor), encoding="utf-8")
    docked = base / "docks" / camera.serial
    staging.rename(docked)  # atomic: the watcher sees a complete volume appear
    return process, docked


def dock_loop_image(base: Path, camera: DemoCamera, files: int, size: int) -> str:
    from drivers.base import CameraIdentity  # noqa: PLC0415 - only the loop path needs these
    from drivers.mass_storage import IDENTITY_FILE, format_identity_file  # noqa: PLC0415
    from drivers.simulator.volume import build_volume, make_image  # noqa: PLC0415

    content = base / "staging" / camera.serial
    content.mkdir(parents=True)
    build_volume(
        content,
        device_serial=camera.serial,
        officer_name=camera.officer_name,
        count=files,
        size_bytes=size,
        start=datetime.now(UTC) - timedelta(hours=9),
        seed=3,
        hostile=False,
    )
    identity = CameraIdentity(
        camera.serial,
        camera.officer_no,
        camera.officer_name,
        "110000000000",
        "北京市公安局",
        source="identity-file",
    )
    (content / IDENTITY_FILE).write_bytes(format_identity_file(identity))
    image = make_image(content, base / f"{camera.serial}.img")
    return subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()


def progress_table(catalog: Catalog) -> tuple[RenderableType, int]:
    rows = []
    with catalog.transaction() as session:
        docks = session.scalars(select(Dock).order_by(Dock.port)).all()
        ended = len(session.scalars(select(DockSession.id).where(DockSession.ended_at.is_not(None))).all())
        for dock in docks:
            done = f"{dock.bytes_done / MIB:.1f}/{dock.bytes_total / MIB:.1f} MiB"
            rate = f"{dock.rate_bps / MIB:.1f} MiB/s" if dock.rate_bps else "-"
            eta = f"{dock.eta_s:.0f}s" if dock.eta_s is not None else "-"
            rows.append((dock.port[-40:], dock.state, (dock.current_file or "-")[-40:], done, rate, eta))
    return table("docks", ("port", "state", "file", "done", "rate", "eta"), rows), ended


def summary_table(catalog: Catalog) -> RenderableType:
    rows = []
    with catalog.transaction() as session:
        for camera in session.scalars(select(Camera).order_by(Camera.device_serial)).all():
            last = session.scalars(
                select(DockSession).where(DockSession.camera_id == camera.id).order_by(DockSession.id.desc())
            ).first()
            offset = (
                f"{camera.last_clock_offset_s:+.3f}s"
                if camera.last_clock_offset_s is not None
                else camera.clock_state or "-"
            )
            rows.append(
                (
                    camera.device_serial,
                    camera.assigned_officer.name if camera.assigned_officer else "-",
                    offset,
                    f"{camera.battery_percent}%" if camera.battery_percent is not None else "-",
                    last.state.value if last else "-",
                    str(last.files_done if last else 0),
                    f"{(last.bytes_done if last else 0) / MIB:.1f}",
                )
            )
    columns = ("camera", "officer", "clock offset", "battery", "last session", "files", "MiB")
    return table("cameras", columns, rows)


def run_demo(console: Console, *, workdir: Path | None, files: int, size_mib: int, keep: bool) -> bool:
    base = workdir or Path(tempfile.mkdtemp(prefix="ingestd-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    use_loop = loop_devices_usable()
    config_path = write_config(base, use_loop=use_loop)
    console.print(
        f"[bold]ingestd demo[/bold] in {base} ({'loop device + ' if use_loop else ''}watched folder)"
    )
    simulators: list[subprocess.Popen[bytes]] = []
    loops: list[str] = []
    daemon: subprocess.Popen[bytes] | None = None
    size = size_mib * MIB
    try:
        with notify_socket(base) as sock:
            env = {**os.environ, "NOTIFY_SOCKET": str(base / "notify.sock")}
            daemon_log = (base / "daemon.log").open("wb")
            daemon = subprocess.Popen(
                [sys.executable, "-m", "ingestd", "run", "--config", str(config_path)],
                stdout=daemon_log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            console.print(f"daemon ready: {wait_ready(sock, daemon)}")
        serial_cameras = CAMERAS[:2] if use_loop else CAMERAS
        for camera in serial_cameras:
            process, docked = dock_folder(base, camera, files, size)
            simulators.append(process)
            console.print(f"docked {camera.serial} (serial over {docked.name})")
        if use_loop:
            loops.append(dock_loop_image(base, CAMERAS[2], files, size))
            console.print(f"docked {CAMERAS[2].serial} (mass storage on {loops[-1]})")
        catalog = Catalog.open(f"sqlite:///{base / 'state' / 'catalog.db'}", read_only=True)
        try:
            deadline = time.monotonic() + INGEST_TIMEOUT_S
            with Live(console=console, refresh_per_second=4) as live:
                while time.monotonic() < deadline:
                    table, ended = progress_table(catalog)
                    live.update(table)
                    if ended >= len(CAMERAS):
                        time.sleep(1.5)  # one more progress flush by the daemon, so the table ends final
                        live.update(progress_table(catalog)[0])
                        break
                    if daemon.poll() is not None:
                        raise DemoError(
                            detail=f"the daemon exited with {daemon.returncode}; see {base}/daemon.log"
                        )
                    time.sleep(0.25)
                else:
                    raise DemoError(detail=f"cameras not ingested within {INGEST_TIMEOUT_S}s")
            console.print()
            console.print(summary_table(catalog))
        finally:
            catalog.close()
        for camera in serial_cameras:  # undock: the daemon records check-out
            shutil.rmtree(base / "docks" / camera.serial)
        time.sleep(1.0)
    finally:
        _stop(daemon, simulators, loops)
    services = Services.open(load_config(config_path), migrate=False, cameras=False)
    try:
        report = verify_all(services, objects=True)
    finally:
        services.close()
    for problem in report.problems:
        console.print(problem_line(f"{problem.area} {problem.kind} {problem.subject}", problem.detail))
    verdict = ("clean", "green") if report.clean else ("NOT clean", "red")
    console.print(
        styled(
            f"ingestctl verify --objects: {report.events_checked} audit events, "
            f"{report.objects_checked} objects: ",
            verdict,
        )
    )
    if not keep and workdir is None:
        remove_sealed_tree(base)
    else:
        console.print(f"kept {base}: config.toml, daemon.log, state/, store/")
    return report.clean


def remove_sealed_tree(path: Path) -> None:
    """Remove a throw-away station (demo, benchmark): its objects are immutable and its checkpoint file
    append-only, which a plain rmtree cannot delete. Never used on a real store."""
    if shutil.which("chattr") is not None:
        subprocess.run(["chattr", "-R", "-f", "-i", "-a", str(path)], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def _stop(
    daemon: subprocess.Popen[bytes] | None, simulators: list[subprocess.Popen[bytes]], loops: list[str]
) -> None:
    if daemon is not None and daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    for process in simulators:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
    for device in loops:
        subprocess.run(["losetup", "--detach", device], check=False, capture_output=True)
