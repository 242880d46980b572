"""Grouping a camera's uevents by its USB port and waiting for them to settle.

A docked camera shows up as several kernel devices (a tty for the control channel, a disk and its
partitions) in no fixed order. They share a USB parent, whose DEVPATH names the physical port. The
grouper collects children per port and emits one `Docked` once no child has arrived for the settle
window (`Settle`), or at once when `ready` (the driver registry, passed in by the daemon) says the group
is complete enough for its driver to start. A volume that appears after the dock (a real camera's disk
comes a second or more after its tty, or only after SetMSDC) is handed on as one `StorageArrived`. A
disk with a partition table is not a volume: its first partition, whose uevent follows, is. The first
`remove` of a child emits `Undocked`, except a tty's while the port still has its disk (a camera that
dropped its control interface in mass-storage mode is still docked). It is pure: the caller supplies
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
from ingestd.docking.events import Docked, DockEvent, StorageArrived, Undocked
from ingestd.docking.source import Ready, Settle

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
    partitioned: bool = False  # a whole disk with a partition table: its partitions' uevents follow


@dataclass
class _Group:
    properties: dict[str, str] = field(default_factory=dict)
    tty_properties: dict[str, str] = field(default_factory=dict)
    tty: str | None = None
    disk: str | None = None
    partitioned: bool = False
    partition: str | None = None
    docked: bool = False
    storage_handed: bool = False  # its volume went out, in the Docked or in a StorageArrived

    @property
    def volume(self) -> str | None:
        """The first partition holds the camera's filesystem; a disk without a partition table is the
        volume; a partitioned disk whose partition has not appeared yet is none."""
        if self.partition is not None:
            return self.partition
        return None if self.partitioned else self.disk

    def device(self, port: str) -> DeviceInfo:
        properties = {**self.properties, **self.tty_properties}
        return DeviceInfo(port=port, properties=properties, tty=self.tty, block=self.volume)


class UeventGrouper:
    def __init__(self, settle_s: float, ready: Ready | None = None) -> None:
        self.settle_s = settle_s
        self._ready = ready
        self._groups: dict[str, _Group] = {}
        self._settle: Settle[str] = Settle(settle_s)

    def feed(self, event: Uevent, now: float, *, early: bool = True) -> list[DockEvent]:
        """Take in one uevent; the events it decides. `early=False` waits out the settle window even
        where `ready` holds (coldplug: everything present is there already)."""
        if event.action == "remove":
            return self._removed(event)
        if event.action != "add":
            return []
        group = self._groups.setdefault(event.port, _Group())
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
                group.partitioned = event.partitioned
        if group.docked:
            return self._storage(event.port, group)
        self._settle.touch(event.port, now)
        if early and self._ready is not None and self._ready(group.device(event.port)):
            self._settle.drop(event.port)
            return [self._dock(event.port, group)]
        return []

    def _removed(self, event: Uevent) -> list[DockEvent]:
        group = self._groups.get(event.port)
        if group is None:
            return []
        if event.subsystem == "tty" and group.docked and group.disk is not None:
            group.tty = None  # the control interface went, the camera's storage stays: still docked
            return []
        del self._groups[event.port]
        self._settle.drop(event.port)
        return [Undocked(event.port)] if group.docked else []

    def _dock(self, port: str, group: _Group) -> Docked:
        group.docked = True
        group.storage_handed = group.volume is not None
        return Docked(group.device(port))

    def _storage(self, port: str, group: _Group) -> list[DockEvent]:
        """A child of a camera already handed over: its volume, if this completed it; else nothing."""
        volume = group.volume
        if volume is None or group.storage_handed:
            return []
        group.storage_handed = True
        return [StorageArrived(port, volume, dict(group.properties))]

    def tick(self, now: float) -> list[DockEvent]:
        """Emit `Docked` for every group that has been quiet for the settle window."""
        return [self._dock(port, self._groups[port]) for port in self._settle.due(now)]

    def next_deadline(self) -> float | None:
        return self._settle.next_deadline()

    def forget(self, port: str) -> None:
        self._groups.pop(port, None)
        self._settle.drop(port)
