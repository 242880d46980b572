"""The udev device source: kernel uevents over netlink, grouped per USB port into dock events.

With udevd running, `source="udev"` gives events with udev's ID_* properties. Without it (containers,
minimal images) `source="kernel"` reads the kernel's own uevents, and the USB IDs udev would have added
(ID_VENDOR_ID, ID_MODEL_ID, ID_SERIAL_SHORT) are read from the USB parent's sysfs attributes instead.
`auto` (`choose_source`) picks udev when udevd answers on its control socket, else kernel: listening
for udevd's events with no udevd would dock nothing, silently.
Loop devices are virtual: attaching an image emits `change`, which is normalised to add/remove by
whether the device now has a backing file, so a test can dock a camera image by attaching it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pyudev
import structlog

from ingestd.docking.events import Docked, DockEvent
from ingestd.docking.grouping import Grouping, Uevent, UeventGrouper, UsbAncestor, dock_port
from ingestd.docking.source import DeviceSource, Ready

log = structlog.get_logger()

SUBSYSTEMS = ("tty", "block")
UDEVD_CONTROL = Path("/run/udev/control")  # where udevd listens; libudev tests the same path
Source = Literal["udev", "kernel"]
USB_SYSFS_IDS = {"idVendor": "ID_VENDOR_ID", "idProduct": "ID_MODEL_ID", "serial": "ID_SERIAL_SHORT"}


def _loop_backing_file(device: Any) -> str | None:
    try:
        return Path(device.sys_path, "loop", "backing_file").read_text().strip() or None
    except OSError:
        return None


def _usb_ancestors(usb: Any) -> list[UsbAncestor]:
    """`usb` and the USB devices above it, nearest first, up to the root hub."""
    chain: list[UsbAncestor] = []
    while usb is not None:
        device_class = usb.attributes.get("bDeviceClass")
        chain.append(
            UsbAncestor(
                usb.device_path, device_class.decode("ascii", "replace").strip() if device_class else ""
            )
        )
        usb = usb.find_parent("usb", "usb_device")
    return chain


def _partitioned(device: Any) -> bool:
    """Whether a whole disk has partitions, so its volume is a partition whose uevent follows. The kernel
    scans the table before it announces the disk, so sysfs already lists them. Not udev's
    ID_PART_TABLE_TYPE: blkid says "dos" for an exFAT card without partitions (its boot sector ends in
    the MBR signature), where the kernel found none and no partition ever follows (seen in the vm tier)."""
    if device.device_type != "disk":
        return False
    return any(child.device_type == "partition" for child in device.children)


def to_uevent(device: Any, action: str, grouping: Grouping = "device") -> Uevent | None:
    """Reduce a pyudev device to a Uevent, or None when it can never be part of a camera."""
    subsystem = device.subsystem
    if subsystem not in SUBSYSTEMS:
        return None
    properties = {str(k): str(v) for k, v in device.properties.items()}
    usb = device.find_parent("usb", "usb_device")
    if usb is not None:
        port = dock_port(_usb_ancestors(usb), grouping)
        for attribute, key in USB_SYSFS_IDS.items():
            if key not in properties:
                value = usb.attributes.get(attribute)
                if value is not None:
                    properties[key] = value.decode("ascii", "replace").strip()
    elif device.sys_name.startswith("loop") and subsystem == "block" and device.device_type == "disk":
        port = device.device_path
        backing = _loop_backing_file(device)
        if action in ("add", "change"):
            if backing is None:
                action = "remove" if action == "change" else "ignore"
            else:
                action = "add"
                properties["LOOP_BACKING_FILE"] = backing
    else:
        return None  # not on USB and not a loop image: the station's own disks and consoles
    if action not in ("add", "remove"):
        return None
    return Uevent(
        action=action,
        port=port,
        subsystem=subsystem,
        devname=device.device_node,
        properties=properties,
        partition=device.device_type == "partition",
        partitioned=action == "add" and subsystem == "block" and _partitioned(device),
    )


def udevd_answers(control: Path = UDEVD_CONTROL) -> bool:
    """Whether a udevd accepts a connection on its control socket (a stale socket file refuses it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
        try:
            probe.connect(str(control))
        except OSError:
            return False
    return True


def choose_source(
    setting: Literal["auto", "udev", "kernel"], control: Path = UDEVD_CONTROL
) -> tuple[Source, str]:
    """The event source for `setting`, and why it was chosen (for the log and `ingestctl status`)."""
    if setting != "auto":
        return setting, "set in the config"
    if udevd_answers(control):
        return "udev", f"auto: udevd answers at {control}"
    return "kernel", f"auto: udevd is not running (nothing answers at {control})"


class UdevSource(DeviceSource):
    """Kernel uevents over netlink, grouped per USB port into Docked/Undocked."""

    thread_name = "udev-source"

    def __init__(
        self,
        sink: Callable[[DockEvent], None],
        *,
        source: Source,
        settle_s: float,
        grouping: Grouping = "device",
        ready: Ready | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        super().__init__(sink, stop=stop)
        self._grouping: Grouping = grouping
        self._grouper = UeventGrouper(settle_s, ready)
        self._context = pyudev.Context()
        self._monitor = pyudev.Monitor.from_netlink(self._context, source=source)
        for subsystem in SUBSYSTEMS:
            self._monitor.filter_by(subsystem)

    def _listen(self) -> None:
        # Listen before enumerating, so a camera docked in between is not missed. What is present already
        # is all there: it settles as one group (no early dock, whose event would have no sink yet).
        self._monitor.start()
        now = time.monotonic()
        for subsystem in SUBSYSTEMS:
            for device in self._context.list_devices(subsystem=subsystem):
                event = to_uevent(device, "add", self._grouping)
                if event is not None:
                    self._grouper.feed(event, now, early=False)

    def _wait_for_change(self, timeout: float) -> list[DockEvent]:
        # An arrival the registry finds complete docks from here, without waiting out the settle window.
        device = self._monitor.poll(timeout=timeout)
        if device is None:
            return []
        event = to_uevent(device, device.action or "", self._grouping)
        if event is None:
            return []
        decided = self._grouper.feed(event, time.monotonic())
        for early in (e for e in decided if isinstance(e, Docked)):
            log.info("docked_early", port=early.port, tty=early.device.tty, block=early.device.block)
        return decided

    def _settled(self, now: float) -> list[DockEvent]:
        return self._grouper.tick(now)

    def _next_deadline(self) -> float | None:
        return self._grouper.next_deadline()

    def _close(self) -> None:
        """Nothing to release: libudev closes the netlink socket with the monitor."""
