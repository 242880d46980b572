"""A QEMU guest booted by virtme-ng, with USB devices hot-plugged over QMP while it runs.

The guest sees the host's root file system read-only over 9p (so the checkout and its .venv are there at
the same paths) and one read-write share, where its agent (`tests/vm/agent.py`) takes requests and the
daemon keeps its state. The guest's console goes to `console.log` in the share's parent directory; a
failing test prints that path. Everything is stopped by the guest's own pid and removed by its own paths.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.system.harness import wait_for

REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT_S = 240.0  # TCG on two shared cores: about 15 s alone, several times that under load
XHCI_BUS = "xhci.0"
KVM_PROBE_TIMEOUT_S = 20.0


class QmpError(Exception):
    """QEMU refused a QMP command; the message is QEMU's."""


def kernel_image() -> Path | None:
    """The newest Debian kernel in /boot (linux-image-amd64 brings one with the USB and FS modules)."""
    images = sorted(Path("/boot").glob("vmlinuz-*"))
    return images[-1] if images else None


def unavailable() -> str | None:
    """Why this host cannot run the vm tier, or None when it can."""
    if os.geteuid() != 0:
        return "needs root: virtme-ng's guest runs as the invoking user, and it must modprobe and mount"
    venv_bin = Path(sys.executable).parent
    for tool in ("qemu-system-x86_64", "mcopy", "mkfs.vfat", "socat"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (run .ci/system-deps as root)"
    if (
        shutil.which("vng", path=str(venv_bin)) is None
        or shutil.which("virtme-run", path=str(venv_bin)) is None
    ):
        return "virtme-ng is not installed in the venv (pip install -e '.[dev]')"
    kernel = kernel_image()
    if kernel is None:
        return "no kernel in /boot (install linux-image-amd64)"
    modules = Path("/lib/modules") / kernel.name.removeprefix("vmlinuz-")
    if not modules.is_dir():
        return f"{kernel} has no modules in {modules}"
    return None


def kvm_works(kernel: Path, scratch: Path) -> bool:
    """Whether a KVM guest runs code here: with no root file system the kernel must reach its panic and
    QEMU exit (-no-reboot) in time. On some hosts /dev/kvm exists and the guest hangs."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    log = scratch / "kvm-probe.log"
    with log.open("wb") as out:
        probe = subprocess.Popen(
            [
                "qemu-system-x86_64", "-enable-kvm", "-m", "256M", "-nographic", "-no-reboot", "-kernel",
                str(kernel), "-append", "console=ttyS0 panic=-1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            probe.wait(timeout=KVM_PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            probe.kill()
            probe.wait()
            return False
    return b"Kernel panic" in log.read_bytes()


@dataclass
class Reply:
    rc: int | None
    stdout: str = ""
    stderr: str = ""


class Qmp:
    """QEMU's machine protocol on its unix socket: one command at a time, events kept for `wait_event`."""

    def __init__(self, path: Path) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.connect(str(path))
        self._reader = self._socket.makefile("rb")
        self.events: list[dict[str, Any]] = []
        self._read()  # the greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self._reader.readline()
        if not line:
            raise QmpError("QEMU closed its QMP socket")
        message: dict[str, Any] = json.loads(line)
        return message

    def execute(self, command: str, **arguments: Any) -> Any:
        self._socket.sendall(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
        while True:
            message = self._read()
            if "event" in message:
                self.events.append(message)
            elif "error" in message:
                raise QmpError(f"{command}: {message['error'].get('desc')}")
            elif "return" in message:
                return message["return"]

    def wait_event(self, name: str, device: str, timeout: float) -> None:
        """Wait for event `name` about device id `device` (e.g. DEVICE_DELETED after device_del), and
        consume it: an id plugged again later gets an event of its own."""

        def wanted(event: dict[str, Any]) -> bool:
            return bool(event["event"] == name and event.get("data", {}).get("device") == device)

        self._socket.settimeout(timeout)
        try:
            while not any(wanted(e) for e in self.events):
                self.events.append(self._read())
        finally:
            self._socket.settimeout(None)
        self.events = [e for e in self.events if not wanted(e)]

    def close(self) -> None:
        self._reader.close()
        self._socket.close()


@dataclass
class Guest:
    """One booted guest. `base` holds the console log, the QMP socket and the read-write `share`."""

    base: Path
    kernel: Path
    kvm: bool = False
    process: subprocess.Popen[bytes] | None = None
    qmp: Qmp | None = None
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def share(self) -> Path:
        return self.base / "share"

    @property
    def console_log(self) -> Path:
        return self.base / "console.log"

    @property
    def qmp_socket(self) -> Path:
        return self.base / "qmp.sock"

    def boot(self) -> None:
        self.share.mkdir(parents=True, exist_ok=True)
        venv_bin = Path(sys.executable).parent
        agent = f"cd {REPO} && exec {sys.executable} -m tests.vm.agent {self.share}"
        qemu = f"-device qemu-xhci,id=xhci -qmp unix:{self.qmp_socket},server=on,wait=off"
        argv = [
            str(venv_bin / "vng"), "-r", str(self.kernel), "--disable-microvm", "--force-9p",
            "--rwdir", str(self.share), "--memory", "1G", "--cpus", "2", f"--qemu-opts={qemu}",
            "--exec", agent, "--verbose",  # the kernel's messages in console.log (quiet without it)
        ]  # fmt: skip
        if not self.kvm:
            argv.insert(3, "--disable-kvm")
        env = {**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}"}  # vng runs virtme-run
        with self.console_log.open("ab") as console:
            self.process = subprocess.Popen(
                argv, stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=self.base, start_new_session=True,
            )  # fmt: skip

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"the guest exited {self.process.returncode}; console: {self.console_log}"
                )
            return (self.share / "agent-ready").exists()

        wait_for(
            f"the guest's agent (console: {self.console_log})", ready, timeout=BOOT_TIMEOUT_S, interval=0.5
        )
        self.qmp = Qmp(self.qmp_socket)

    def _request(self, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        name = f"{next(self._numbers):06d}.json"
        temporary = self.share / "requests" / f".{name}"
        temporary.write_text(json.dumps(body), encoding="utf-8")
        temporary.replace(self.share / "requests" / name)
        reply = self.share / "replies" / name
        wait_for(f"the guest to answer {body} (console: {self.console_log})", reply.exists, timeout, 0.1)
        answer: dict[str, Any] = json.loads(reply.read_text(encoding="utf-8"))
        reply.unlink()
        if "error" in answer:
            raise AssertionError(f"the guest agent refused {body}: {answer['error']}")
        return answer

    def run(self, *argv: str, timeout: float = 60.0) -> Reply:
        """Run a command in the guest to completion (as root)."""
        answer = self._request({"argv": list(argv), "timeout": timeout}, timeout + 30)
        return Reply(answer["rc"], answer["stdout"], answer["stderr"])

    def check(self, *argv: str, timeout: float = 60.0) -> str:
        reply = self.run(*argv, timeout=timeout)
        if reply.rc != 0:
            raise AssertionError(f"in the guest, {argv} exited {reply.rc}: {reply.stderr.strip()}")
        return reply.stdout

    def spawn(self, name: str, argv: list[str], log: Path) -> int:
        answer = self._request({"spawn": name, "argv": argv, "log": str(log)}, 60)
        return int(answer["pid"])

    def signal(self, name: str, number: int = signal.SIGTERM, wait: float = 60.0) -> int | None:
        answer = self._request({"signal": name, "number": int(number), "wait": wait}, wait + 30)
        rc: int | None = answer["rc"]
        return rc

    def clock_behind_host(self) -> tuple[float, float]:
        """Bounds on how far the guest's clock is behind the host's (host minus guest, seconds): a TCG
        guest's clock starts from the RTC and drifts, so a camera's offset measured in the guest is its
        drift against the host plus this."""
        before = time.time()
        guest_now = float(self.check(sys.executable, "-c", "import time; print(time.time())"))
        after = time.time()
        return before - guest_now, after - guest_now

    def exit_code(self, name: str) -> int | None:
        """The exit code of a process started by `spawn`, or None while it runs."""
        rc: int | None = self._request({"poll": name}, 60)["rc"]
        return rc

    # -- USB over QMP ------------------------------------------------------------------------------

    def _qmp(self) -> Qmp:
        assert self.qmp is not None, "boot() first"
        return self.qmp

    def add_hub(self, device_id: str, port: str) -> None:
        self._qmp().execute("device_add", driver="usb-hub", id=device_id, bus=XHCI_BUS, port=port)

    def add_disk(self, device_id: str, image: Path, serial: str, port: str) -> None:
        """A usb-storage disk (QEMU's 46f4:0001) backed by a raw image, with USB serial `serial`."""
        self._qmp().execute(
            "blockdev-add",
            driver="raw",
            **{"node-name": device_id},
            file={"driver": "file", "filename": str(image)},
        )
        self._add_usb("usb-storage", device_id, serial, port, drive=device_id)

    def add_serial(self, device_id: str, chardev: Path, serial: str, port: str) -> None:
        """An FTDI usb-serial (0403:6001, /dev/ttyUSB* in the guest) whose other end is a unix socket that
        QEMU listens on; the device is attached only while a client (the camera bridge) is connected."""
        backend = {
            "type": "socket",
            "data": {"addr": {"type": "unix", "data": {"path": str(chardev)}}, "server": True, "wait": False},
        }
        self._qmp().execute("chardev-add", id=device_id, backend=backend)
        self._add_usb("usb-serial", device_id, serial, port, chardev=device_id)

    def _add_usb(self, driver: str, device_id: str, serial: str, port: str, **backend: str) -> None:
        self._qmp().execute(
            "device_add", driver=driver, id=device_id, serial=serial, bus=XHCI_BUS, port=port, **backend
        )

    def unplug(self, device_id: str, timeout: float = 60.0) -> None:
        """device_del, and wait until the guest has let the device go (QEMU's DEVICE_DELETED)."""
        qmp = self._qmp()
        qmp.execute("device_del", id=device_id)
        qmp.wait_event("DEVICE_DELETED", device_id, timeout)

    def usb_device_ids(self) -> set[str]:
        """The ids of the devices plugged by QMP that are still there (qom-list of QEMU's peripherals)."""
        return {entry["name"] for entry in self._qmp().execute("qom-list", path="/machine/peripheral")}

    def remove_chardev(self, chardev: str) -> None:
        self._qmp().execute("chardev-remove", id=chardev)

    def remove_blockdev(self, node: str) -> None:
        """Release the image of a disk already unplugged, so it can be plugged again."""
        self._qmp().execute("blockdev-del", **{"node-name": node})

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self._request({"halt": True}, 30)
                self.process.wait(timeout=60)
            except (AssertionError, subprocess.TimeoutExpired, OSError):
                os.killpg(self.process.pid, signal.SIGKILL)  # the session vng started, by its own id
                self.process.wait(timeout=30)
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
