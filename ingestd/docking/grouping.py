"""Grouping a camera's uevents by its USB port and waiting for them to settle.

A docked camera shows up as several kernel devices (a tty for the control channel, a disk and its
partitions) in no fixed order. They share a USB parent, whose DEVPATH names the physical port. The
grouper collects children per port and emits one `Docked` once no child has arrived for the settle
window (`Settle`); the first `remove` of any child emits `Undocked`. It is pure: the caller supplies
the clock.

Which USB device names the port is `Grouping`: a real camera is one composite USB device (storage and
control tty are interfaces of it), so by default each USB device is a dock and each port of a station's
hub is its own dock. Some cameras (and QEMU's usb-storage plus usb-serial) show storage and tty as two
USB devices behind a hub of their own; `hub` groups the devices behind one non-root hub instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from drivers.base import DeviceInfo
from ingestd.docking.events import Docked, DockEvent, Undocked
from ingestd.docking.source import Settle

Grouping = Literal["device", "hub"]
USB_CLASS_HUB = "09"


@dataclass(frozen=True)
class UsbAncestor:
    """A USB device above a tty or disk: its DEVPATH and bDeviceClass (two hex digits)."""

    devpath: str
    device_class: str

    @property
    def is_root_hub(self) -> bool:
        return self.devpath.rsplit("/", 1)[-1].startswith("usb")  # usb1, usb2: the controller's own hub


def dock_port(ancestors: Sequence[UsbAncestor], grouping: Grouping) -> str:
    """The DEVPATH that names a child's dock; `ancestors` are its USB devices, nearest first."""
    nearest = ancestors[0]
    if grouping == "hub" and len(ancestors) > 1:
        parent = ancestors[1]
        if parent.device_class == USB_CLASS_HUB and not parent.is_root_hub:
            return parent.devpath
    return nearest.devpath


@dataclass(frozen=True)
class Uevent:
    """A uevent reduced to what grouping needs. `port` is the USB parent's DEVPATH (or the device's own)."""

    action: str  # "add" or "remove" (a loop attach/detach is normalised to these by the source)
    port: str
    subsystem: str
    devname: str | None
    properties: Mapping[str, str]
    partition: bool = False


@dataclass
class _Group:
    properties: dict[str, str] = field(default_factory=dict)
    tty_properties: dict[str, str] = field(default_factory=dict)
    tty: str | None = None
    disk: str | None = None
    partition: str | None = None
    docked: bool = False


class UeventGrouper:
    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self._groups: dict[str, _Group] = {}
        self._settle: Settle[str] = Settle(settle_s)

    def feed(self, event: Uevent, now: float) -> list[DockEvent]:
        if event.action == "remove":
            group = self._groups.pop(event.port, None)
            self._settle.drop(event.port)
            return [Undocked(event.port)] if group is not None and group.docked else []
        if event.action != "add":
            return []
        group = self._groups.setdefault(event.port, _Group())
        if group.docked:
            return []  # a late child of a camera already handed over; the session has what it needs
        self._settle.touch(event.port, now)
        # Keep the union so a rule can match on any child's properties whichever arrived first. On a
        # composite camera the USB IDs are the same on every child; where the tty and the disk are two
        # USB devices (grouped by hub) they differ, and the tty's win: it is the camera's control channel.
        if event.subsystem == "tty":
            group.tty_properties.update(event.properties)
            group.tty = event.devname
        elif event.subsystem == "block":
            group.properties.update(event.properties)
            if event.partition:
                group.partition = group.partition or event.devname
            else:
                group.disk = event.devname
        return []

    def tick(self, now: float) -> list[DockEvent]:
        """Emit `Docked` for every group that has been quiet for the settle window."""
        ready: list[DockEvent] = []
        for port in self._settle.due(now):
            group = self._groups[port]
            group.docked = True
            # The first partition holds the camera's filesystem; a partitionless disk is the volume.
            block = group.partition or group.disk
            properties = {**group.properties, **group.tty_properties}
            ready.append(Docked(DeviceInfo(port=port, properties=properties, tty=group.tty, block=block)))
        return ready

    def next_deadline(self) -> float | None:
        return self._settle.next_deadline()

    def forget(self, port: str) -> None:
        self._groups.pop(port, None)
        self._settle.drop(port)
