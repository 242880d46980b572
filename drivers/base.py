"""The camera interface every transport implements, and the error hierarchy drivers raise.

A driver turns one docked device into a `CameraLink`. Everything above `drivers/` talks to cameras only
through these types, so a new transport (serial, SCSI pass-through, adb) is a new adapter, not a new
code path in the daemon.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar


class DriverError(Exception):
    """Root of every driver error. The message always names the device and the command."""

    exit_code: ClassVar[int] = 20
    wire_code: ClassVar[str] = "driver"
    template: ClassVar[str] = "{device}: {command}: {detail}"

    def __init__(self, device: str, command: str, detail: str) -> None:
        self.device = device
        self.command = command
        self.detail = detail
        super().__init__(self.template.format(device=device, command=command, detail=detail))


class DriverTimeout(DriverError):
    """The device did not answer within the command's deadline, after all retries."""

    exit_code = 21
    wire_code = "driver-timeout"


class AuthenticationFailed(DriverError):
    """The device refused the password (GA/T 947.4 Init_Device)."""

    exit_code = 22
    wire_code = "authentication-failed"


class CameraProtocolError(DriverError):
    """The device answered with something the protocol does not allow."""

    exit_code = 23
    wire_code = "camera-protocol"


class Unsupported(DriverError):
    """The transport or the device model cannot do this command."""

    exit_code = 24
    wire_code = "unsupported"


class DeviceGone(DriverError):
    """The device vanished (unplugged, tty closed, block device removed)."""

    exit_code = 25
    wire_code = "device-gone"


class MountError(DriverError):
    """A camera volume could not be mounted or unmounted."""

    exit_code = 26
    wire_code = "mount"


@dataclass(frozen=True)
class CameraIdentity:
    """The GA/T 947.4 ZFY_INFO record, decoded. Field widths are the standard's."""

    device_serial: str  # cSerial[7]
    officer_no: str  # userNo[6]
    officer_name: str  # userName[32], GBK on the wire
    unit_no: str  # unitNo[12]
    unit_name: str  # unitName[32], GBK on the wire
    # Where the identity came from: "control-channel", "usb-serial" or "identity-file".
    source: str = "control-channel"


class ClockSyncState(enum.StrEnum):
    """Whether the station could measure and correct the camera clock. Never hidden, always reported."""

    SYNCED = "synced"
    MEASURED_ONLY = "measured-only"  # offset known, set failed or read-back disagreed
    UNSUPPORTED = "unsupported"  # no control channel (plain mass storage)


@dataclass(frozen=True)
class ClockSample:
    """One round trip: station send/receive times bracketing the camera's reported time."""

    sent_at: datetime
    received_at: datetime
    camera_time: datetime

    @property
    def round_trip_s(self) -> float:
        return (self.received_at - self.sent_at).total_seconds()

    @property
    def offset_s(self) -> float:
        """camera - station at the midpoint of the round trip (the NTP estimate)."""
        midpoint = self.sent_at + (self.received_at - self.sent_at) / 2
        return (self.camera_time - midpoint).total_seconds()


@dataclass(frozen=True)
class ClockSync:
    """The measured offset before correction, and the outcome of the correction."""

    offset_s: float | None
    round_trip_s: float | None
    state: ClockSyncState
    residual_s: float | None = None  # offset measured again after set_clock, when synced


@dataclass(frozen=True)
class Battery:
    percent: int  # 0..100
    charging: bool


@dataclass(frozen=True)
class StorageInfo:
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class Resolution:
    width: int
    height: int


@dataclass(frozen=True)
class OriginalFile:
    """A file on a mounted camera volume as it was when its bytes were read (its fstat): the deletion
    refuses a file that is no longer this one."""

    path: Path  # relative to the volume root
    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path, info: os.stat_result) -> OriginalFile:
        return cls(path, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)

    def differs_from(self, info: os.stat_result) -> str | None:
        """What changed since, or None when `info` is still this file."""
        now = OriginalFile.of(self.path, info)
        changed = [
            f"{name} {getattr(self, name)} -> {getattr(now, name)}"
            for name in ("device", "inode", "size", "mtime_ns")
            if getattr(self, name) != getattr(now, name)
        ]
        return ", ".join(changed) or None


class DeletionOutcome(enum.StrEnum):
    DELETED = "deleted"
    REFUSED = "refused"  # not the file that was read any more, or not a regular file inside the volume
    FAILED = "failed"  # the unlink itself failed


@dataclass(frozen=True)
class Deletion:
    file: OriginalFile
    outcome: DeletionOutcome
    reason: str | None = None


class CameraLink(abc.ABC):
    """One docked camera, opened by its driver. Not thread-safe: one ingest session owns it."""

    name: str  # for messages: "serial:/dev/ttyACM0" or "msc:/dev/sdb1"

    @abc.abstractmethod
    def identify(self) -> CameraIdentity: ...

    @abc.abstractmethod
    def read_clock(self) -> ClockSample: ...

    @abc.abstractmethod
    def set_clock(self, when: datetime) -> None: ...

    @abc.abstractmethod
    def battery(self) -> Battery: ...

    @abc.abstractmethod
    def storage(self) -> StorageInfo: ...

    @abc.abstractmethod
    def resolution(self) -> Resolution: ...

    @abc.abstractmethod
    def enter_mass_storage(self) -> None: ...

    @abc.abstractmethod
    def sync_clock(self, samples: int = 5) -> ClockSync:
        """Measure the offset (min round trip of k samples), then set and read back."""

    @abc.abstractmethod
    def mounted_volume(self) -> contextlib.AbstractContextManager[Path]:
        """Yield the camera volume mounted read-only in a private directory; unmount on exit."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def present(self) -> bool:
        """Is the device still attached? Cheap and sends no command: polled during long copies."""
        return True

    def needs_storage(self) -> bool:
        """Whether the volume has yet to appear (a camera docked by its control channel alone)."""
        return False

    def attach_storage(self, block: str, disk_sequence: str | None = None) -> None:
        """Take `block` as the volume: it appeared after the dock, once the camera is in mass storage
        (`disk_sequence`: the DISKSEQ of the disk instance that appeared, where known)."""
        raise Unsupported(self.name, "attach_storage", "this camera takes no storage after its dock")

    def delete_originals(self, volume: Path, files: list[OriginalFile]) -> list[Deletion]:
        """Delete proven recordings from the camera, each only if it is still the file that was read;
        returns one outcome per file, in order.

        Only called after each file's copy was re-read, its BLAKE3 matched and the catalog commit is
        durable. The default refuses: a transport must opt in.
        """
        raise Unsupported(self.name, "delete_originals", "this camera does not support deleting recordings")

    def __enter__(self) -> CameraLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


DISKSEQ = "DISKSEQ"  # property: the disk instance the dock saw (kernel uevent); see mount.disk_sequence


@dataclass(frozen=True)
class DeviceInfo:
    """What the dock layer knows of a docked device: udev properties and its child nodes."""

    port: str  # physical USB port path (the USB parent's DEVPATH), stable per dock slot
    properties: Mapping[str, str]
    tty: str | None = None  # control channel node, e.g. /dev/ttyACM0
    block: str | None = None  # volume node, e.g. /dev/sdb1 or /dev/loop3
    directory: Path | None = None  # an already-mounted volume (watched folder, card reader)


@dataclass(frozen=True)
class DriverOptions:
    """Per-rule options from a `[[camera]]` config entry, passed through to the driver."""

    password: str = ""
    baud_rate: int = 115200
    filename_patterns: tuple[str, ...] = ()
    extensions: tuple[str, ...] = (".mp4", ".mov", ".avi", ".jpg", ".wav")
    filesystems: tuple[str, ...] = ("vfat", "exfat")  # a volume of another type is never mounted
    extra: Mapping[str, Any] = field(default_factory=dict)


class Driver(abc.ABC):
    """A transport. The registry picks one per device from the `[[camera]]` rules."""

    name: ClassVar[str]

    @abc.abstractmethod
    def open(self, device: DeviceInfo, options: DriverOptions) -> CameraLink: ...

    def ready(self, device: DeviceInfo) -> bool:
        """Whether `device` has what this driver needs to start, so its dock need not wait out the
        settle window: by default its volume."""
        return device.block is not None or device.directory is not None


@contextlib.contextmanager
def closing_camera(camera: CameraLink) -> Iterator[CameraLink]:
    """Close the camera however the block exits, so a failed session never leaks a tty or a mount."""
    try:
        yield camera
    finally:
        camera.close()
