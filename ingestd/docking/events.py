"""What the dock layer tells the dock manager."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from drivers.base import DeviceInfo


@dataclass(frozen=True)
class Docked:
    """A camera is on `device.port`: its children (tty, block, or a mounted directory) settled, or enough
    of them are there for its driver to start (`ready`)."""

    device: DeviceInfo

    @property
    def port(self) -> str:
        return self.device.port


@dataclass(frozen=True)
class StorageArrived:
    """The volume of a camera docked without one appeared on its port (`block`: the partition, or the
    whole disk when it has no partition table). `properties` are the disk's."""

    port: str
    block: str
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Undocked:
    port: str


DockEvent = Docked | StorageArrived | Undocked
