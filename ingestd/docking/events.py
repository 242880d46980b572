"""What the dock layer tells the dock manager."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.base import DeviceInfo


@dataclass(frozen=True)
class Docked:
    """A camera's children (tty, block, or a mounted directory) are all present on `device.port`."""

    device: DeviceInfo

    @property
    def port(self) -> str:
        return self.device.port


@dataclass(frozen=True)
class Undocked:
    port: str


DockEvent = Docked | Undocked
