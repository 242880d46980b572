"""Grouping a camera's uevents by its USB port and waiting for them to settle.

A docked camera shows up as several kernel devices (a tty for the control channel, a disk and its
partitions) in no fixed order. They share a USB parent, whose DEVPATH names the physical port. The
grouper collects children per port and emits one `Docked` once no child has arrived for the settle
window (`Settle`); the first `remove` of any child emits `Undocked`. It is pure: the caller supplies
the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from drivers.base import DeviceInfo
from ingestd.docking.events import Docked, DockEvent, Undocked
from ingestd.docking.source import Settle


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
        # USB-level properties (vendor, model, serial) are the same on every child; keep the union so
        # a rule can match on any of them whichever child arrived first.
        group.properties.update(event.properties)
        if event.subsystem == "tty":
            group.tty = event.devname
        elif event.subsystem == "block":
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
            ready.append(
                Docked(DeviceInfo(port=port, properties=dict(group.properties), tty=group.tty, block=block))
            )
        return ready

    def next_deadline(self) -> float | None:
        return self._settle.next_deadline()

    def forget(self, port: str) -> None:
        self._groups.pop(port, None)
        self._settle.drop(port)
