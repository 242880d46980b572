"""The station inside the guest, and cameras plugged into it from the host.

`GuestStation` runs the real `ingestd run` in the guest from the checkout, its state and store on the
read-write share (so the host reads the catalog file and the log directly); its paths, config and log
parsing are the system tier's `Daemon`. `UsbCamera` is the system tier's simulator on the host: its
control channel reaches the guest's FTDI tty through QEMU's chardev (socat bridges the simulator's pty
to it), and its volume is a vfat image filled with mtools, attached as usb-storage. `GadgetCamera` is
a camera as real ones are, one composite USB device: the guest's configfs gadget (`tests/vm/gadget.py`)
with its card image on the share, and the simulator running in the guest behind the gadget's tty.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import blake3

from drivers.simulator.volume import build_volume, make_image
from ingestd.docking.grouping import Grouping
from store.catalog import Catalog
from tests.system.harness import Daemon, SimulatedCamera, wait_for
from tests.vm import gadget
from tests.vm.machine import Guest

GUEST_CONTROL_DIR = Path("/run/ingestd-vm")  # a unix socket cannot live on the 9p share
# SQLite's WAL index is a shared mmap, which 9p refuses (disk I/O error): the catalog lives on the guest's
# own tmpfs, and the host reads a copy taken after the daemon stopped (its WAL checkpointed into the file).
GUEST_STATE = Path("/var/lib/ingestd-vm")
# QEMU's usb-serial is an FTDI FT232 (0403:6001); its usb-storage is 46f4:0001.
SERIAL_RULE = """
[[camera]]
match = { ID_VENDOR_ID = "0403", ID_MODEL_ID = "6001" }
driver = "serial"
password = "000000"
filesystems = ["vfat", "exfat"]
"""
# The composite gadget carries the Linux Foundation's multifunction IDs (see tests/vm/gadget.py).
GADGET_RULE = f"""
[[camera]]
match = {{ ID_VENDOR_ID = "{gadget.VENDOR_ID}", ID_MODEL_ID = "{gadget.PRODUCT_ID}" }}
driver = "serial"
password = "000000"
filesystems = ["vfat", "exfat"]
"""
# Under TCG a re-enumeration (off the bus, back, SCSI scan, settle window) takes seconds, many under load.
REENUMERATE_S = 120.0
# A real usb-storage disk appears only after the driver's delay_use (1 s) and a SCSI scan, well after the
# tty of the same camera; under TCG that is seconds. The settle window must cover it, or the camera docks
# with its tty and no disk (seen here with the system tier's 0.3 s).
SETTLE_S = 6.0
SESSION_TIMEOUT_S = 240.0  # TCG: the guest copies and hashes at a few MiB/s


def guest_daemon(
    guest: Guest,
    name: str,
    *,
    udev_source: str = "udev",
    grouping: Grouping = "hub",
    rule: str = SERIAL_RULE,
    detection: str = "",
) -> Daemon:
    """The system tier's daemon harness for station `name` (its own state, catalog and log), on the
    share; by default grouping QEMU's devices by hub and docking its FTDI tty."""
    return Daemon(
        base=guest.share / name,
        udev=True,
        udev_source=udev_source,
        camera_filesystems=("vfat", "exfat"),
        control_dir=GUEST_CONTROL_DIR,
        database_url=f"sqlite:///{GUEST_STATE / name / 'catalog.db'}",
        settle_seconds=SETTLE_S,
        detection_config=f'usb_grouping = "{grouping}"\n{detection}',
        extra_config=rule,
    )


@dataclass
class GuestStation:
    guest: Guest
    daemon: Daemon
    _readies: int = 0  # "ready" events in the log before the last launch
    launched: bool = False  # a daemon was started and not stopped yet

    @property
    def guest_catalog(self) -> Path:
        return Path(self.daemon.catalog_url.removeprefix("sqlite:///"))

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the daemon without waiting for it: under TCG its start takes tens of seconds, which a
        test can spend readying its camera."""
        self.daemon.base.mkdir(parents=True, exist_ok=True)
        self.daemon.docks.mkdir(exist_ok=True)
        self.daemon.write_config()
        self.guest.check("mkdir", "-p", str(GUEST_CONTROL_DIR), str(self.guest_catalog.parent))
        self._readies = len(self.daemon.events("ready"))
        argv = [sys.executable, "-m", "ingestd", "run", "--config", str(self.daemon.config_path)]
        self.guest.spawn("ingestd", argv, self.daemon.log_path)
        self.launched = True

    def wait_ready(self) -> None:
        def ready() -> bool:
            exited = self.guest.exit_code("ingestd")
            if exited is not None:
                raise AssertionError(f"the guest's daemon exited {exited} (log: {self.daemon.log_path})")
            return len(self.daemon.events("ready")) > self._readies

        wait_for(f"the guest's daemon to be ready (log: {self.daemon.log_path})", ready, 180, 0.5)

    def stop(self) -> None:
        """SIGTERM, as systemd stops it, then copy the checkpointed catalog onto the share."""
        code = self.guest.signal("ingestd")
        self.launched = False
        assert code == 0, f"the guest's daemon exited {code} (log: {self.daemon.log_path})"
        self.catalog_copy.unlink(missing_ok=True)
        self.guest.check("cp", str(self.guest_catalog), str(self.catalog_copy))

    @property
    def catalog_copy(self) -> Path:
        return self.daemon.base / "catalog-after-stop.db"

    def catalog(self) -> Catalog:
        """The catalog as the daemon left it at its last stop."""
        return Catalog.open(f"sqlite:///{self.catalog_copy}", read_only=True)

    def ingest(self, camera: UsbCamera) -> dict[str, Any]:
        """Start the daemon, plug `camera`, wait for its one session to end, stop: its summary."""
        self.start()
        try:
            camera.plug(self.guest, self.guest.base)
            (summary,) = self.wait_summaries(1)
        finally:
            self.stop()
        return summary

    def summaries(self, port: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.daemon.events("ingest_summary") if port is None or e.get("port") == port]

    def wait_summaries(self, count: int, timeout: float = SESSION_TIMEOUT_S) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            found = self.summaries()
            return found if len(found) >= count else None

        return wait_for(f"{count} ingest summaries (log: {self.daemon.log_path})", enough, timeout, 0.5)


@dataclass
class UsbCamera:
    """A simulated camera as two USB devices behind a hub: usb-serial on hub port 2, usb-storage on 1."""

    camera: SimulatedCamera
    image: Path
    hub: str  # the root port its hub is plugged into ("1")
    bridge: subprocess.Popen[bytes] | None = None

    @property
    def ids(self) -> dict[str, str]:
        serial = self.camera.serial
        return {"hub": f"hub-{serial}", "disk": f"disk-{serial}", "tty": f"tty-{serial}"}

    @classmethod
    def build(cls, base: Path, serial: str, hub: str, *, fstype: str = "vfat", **options: Any) -> UsbCamera:
        camera = SimulatedCamera(base=base, serial=serial, **options)
        camera.start()
        (camera.staging / ".ingestd-dock.json").unlink()  # the folder tier's descriptor; no part of a card
        image = make_image(camera.staging, base / f"{serial}-card.img", fstype=fstype)
        return cls(camera=camera, image=image, hub=hub)

    def plug(self, guest: Guest, base: Path) -> None:
        """Hub, then the control tty (attached once the bridge connects), then the disk."""
        ids = self.ids
        guest.add_hub(ids["hub"], self.hub)
        chardev = base / f"{self.camera.serial}-tty.sock"
        guest.add_serial(ids["tty"], chardev, self.camera.serial, f"{self.hub}.2")
        assert self.camera.tty is not None
        with (base / f"bridge-{self.camera.serial}.log").open("ab") as log:
            self.bridge = subprocess.Popen(
                ["socat", f"UNIX-CONNECT:{chardev}", f"FILE:{self.camera.tty},rawer"], stderr=log
            )
        self.plug_disk(guest)

    def plug_disk(self, guest: Guest) -> None:
        guest.add_disk(self.ids["disk"], self.image, self.camera.serial, f"{self.hub}.1")

    def unplug_disk(self, guest: Guest) -> None:
        guest.unplug(self.ids["disk"])
        guest.remove_blockdev(self.ids["disk"])

    def unplug(self, guest: Guest) -> None:
        """Take the whole camera out: disk (if still in), tty, hub; the bridge ends with its socket."""
        present = guest.usb_device_ids()
        if self.ids["disk"] in present:
            self.unplug_disk(guest)
        if self.ids["tty"] in present:
            guest.unplug(self.ids["tty"])
            guest.remove_chardev(self.ids["tty"])
        if self.ids["hub"] in present:
            guest.unplug(self.ids["hub"])
        if self.bridge is not None:
            self.bridge.wait(timeout=30)

    def card_digest(self) -> str:
        return blake3.blake3(self.image.read_bytes()).hexdigest()

    def card_files(self) -> list[str]:
        return vfat_recordings(self.image)

    def close(self) -> None:
        if self.bridge is not None and self.bridge.poll() is None:
            self.bridge.terminate()
            self.bridge.wait(timeout=10)
        self.camera.close()


def vfat_recordings(image: Path) -> list[str]:
    """The recordings on a vfat card image, read on the host with mtools."""
    listing = subprocess.run(
        ["mdir", "-i", str(image), "-b", "-/", "::"], capture_output=True, text=True, check=False
    ).stdout
    return sorted(line for line in listing.splitlines() if line.upper().endswith(".MP4"))


def recordings_in(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".mp4", ".mov"))


@dataclass
class GadgetCamera:
    """One composite USB device made by the guest's kernel: a disk and a control tty on one port.

    The card is generated on the host into `staging` on the share and imaged (`image`); the simulator
    runs in the guest, and socat there joins its pty to the gadget's `/dev/ttyGS0`, whose other end is
    the station's `/dev/ttyACM0`."""

    guest: Guest
    serial: str
    staging: Path
    image: Path

    @property
    def name(self) -> str:
        return f"cam{self.serial}"

    @classmethod
    def build(
        cls, guest: Guest, serial: str, *, files: int = 3, size_bytes: int = 256 * 1024
    ) -> GadgetCamera:
        """The card's recordings in `staging`, to be imaged by `make_vfat` or the guest's exFAT builder."""
        cards = guest.share / "cards"
        staging = cards / serial
        build_volume(
            staging,
            device_serial=serial,
            officer_name="张三",
            count=files,
            size_bytes=size_bytes,
            start=(datetime.now(UTC) - timedelta(hours=6)).replace(microsecond=0),
            seed=int(serial[-4:]),  # distinct content per camera, so nothing dedups by accident
        )
        return cls(guest=guest, serial=serial, staging=staging, image=cards / f"{serial}.img")

    def make_vfat(self) -> None:
        make_image(self.staging, self.image, fstype="vfat")

    def make_exfat(self, size_mib: int = 32) -> None:
        """Image the card as exFAT, in the guest (tests/vm/exfat.py says how names go in)."""
        with self.image.open("wb") as out:
            out.truncate(size_mib * 2**20)
        self.guest.check(sys.executable, "-m", "tests.vm.exfat", "build", str(self.image), str(self.staging))

    def exfat_files(self) -> list[str]:
        """The exFAT card's paths as the guest's kernel shows them in UTF-8; not while the gadget is bound."""
        return self.guest.check(sys.executable, "-m", "tests.vm.exfat", "list", str(self.image)).splitlines()

    def recordings(self) -> list[Path]:
        return recordings_in(self.staging)

    def start(self, *, drift_s: float = 0.0, battery: int = 80, control_only: bool = False) -> None:
        """The simulator (in the guest), the gadget (not bound yet) and the bridge between them. With
        `control_only`, the camera offers its tty alone and re-enumerates with its storage only once
        it has answered SetMSDC, as a GA/T 947 camera does."""
        log = self.guest.share / f"simulator-{self.serial}.log"
        argv = [
            sys.executable, "-m", "drivers.simulator", "--serial", self.serial, "--officer-name", "张三",
            "--drift", str(drift_s), "--battery", str(battery),
        ]  # fmt: skip
        if control_only:
            # A moment after the reply, as firmware does: the reply must cross the link before it drops.
            reenumerate = f"sleep 1; exec {sys.executable} -m tests.vm.gadget storage-only {self.name}"
            argv += ["--on-msdc", f"sh -c '{reenumerate}'"]
        self.guest.spawn(f"simulator-{self.serial}", argv, log)

        def ready() -> str | None:
            for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("{"):
                    return str(json.loads(line)["tty"])
            return None

        pty = wait_for(f"the guest's simulator {self.serial} (log: {log})", ready, 120, 0.2)
        create = [sys.executable, "-m", "tests.vm.gadget", "create", self.name]
        create += ["--serial", self.serial, "--image", str(self.image)]
        self.guest.check(*create, *(["--control-only"] if control_only else []))
        bridge = ["socat", "FILE:/dev/ttyGS0,rawer", f"FILE:{pty},rawer"]
        self.guest.spawn(f"bridge-{self.serial}", bridge, self.guest.share / f"bridge-{self.serial}.log")

    def bind(self) -> None:
        """Plug it in: the guest's USB host side enumerates the device."""
        self.guest.check(sys.executable, "-m", "tests.vm.gadget", "bind", self.name)

    def close(self) -> None:
        """Unplug and take the gadget apart, then stop the bridge and the simulator (by their names)."""
        self.guest.check(sys.executable, "-m", "tests.vm.gadget", "remove", self.name)
        for process in (f"bridge-{self.serial}", f"simulator-{self.serial}"):
            self.guest.signal(process)

    def card_files(self) -> list[str]:
        return vfat_recordings(self.image)
