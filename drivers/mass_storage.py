"""The plain USB mass-storage camera: a volume and nothing else.

Such a camera has no control channel, so clock, battery and resolution are `Unsupported` and
`sync_clock` reports `ClockSyncState.UNSUPPORTED` rather than pretending. Its identity comes from the
identity file `ZFYINFO.TXT` at the volume root if present, else the USB serial udev reports
(`ID_SERIAL_SHORT`). Both are claims, only as trustworthy as the device; when they disagree the
session raises an identity-mismatch flag, as for a serial camera.

`ZFYINFO.TXT` holds the GA/T 947.4 ZFY_INFO fields as `key=value` lines, UTF-8 or GBK:

    cSerial=0000001
    userNo=012345
    userName=张三
    unitNo=110105000000
    unitName=朝阳分局

Field widths are the standard's byte widths in GBK (cSerial 7, userNo 6, userName 32, unitNo 12,
unitName 32); a file breaking them, or larger than 4 KiB, is refused with a `CameraProtocolError`.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import ClassVar

import structlog

from drivers.base import (
    DISKSEQ,
    Battery,
    CameraIdentity,
    CameraLink,
    CameraProtocolError,
    ClockSample,
    ClockSync,
    ClockSyncState,
    Deletion,
    DeviceGone,
    DeviceInfo,
    Driver,
    DriverOptions,
    MountError,
    OriginalFile,
    Resolution,
    StorageInfo,
    Unsupported,
)
from drivers.mount import block_device_present, mount_readonly
from drivers.wipe import delete_recordings

IDENTITY_FILE = "ZFYINFO.TXT"
IDENTITY_MAX_BYTES = 4096
# key in the file -> (CameraIdentity field, GBK byte width from GA/T 947.4 ZFY_INFO)
IDENTITY_FIELDS: dict[str, tuple[str, int]] = {
    "cSerial": ("device_serial", 7),
    "userNo": ("officer_no", 6),
    "userName": ("officer_name", 32),
    "unitNo": ("unit_no", 12),
    "unitName": ("unit_name", 32),
}

log = structlog.get_logger()


def format_identity_file(identity: CameraIdentity) -> bytes:
    """The identity file for `identity`, GBK-encoded as camera firmware writes it."""
    lines = [f"{key}={getattr(identity, field)}" for key, (field, _width) in IDENTITY_FIELDS.items()]
    return ("\r\n".join(lines) + "\r\n").encode("gbk")


def parse_identity_file(data: bytes, device: str) -> CameraIdentity:
    """Decode an identity file; refuse unknown keys, missing serial and over-wide fields."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("gbk")
        except UnicodeDecodeError:
            raise CameraProtocolError(
                device, "identify", f"{IDENTITY_FILE} is neither UTF-8 nor GBK"
            ) from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, separator, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not separator or key not in IDENTITY_FIELDS:
            raise CameraProtocolError(
                device, "identify", f"{IDENTITY_FILE} line {number}: unknown entry {key[:40]!r}"
            )
        field, width = IDENTITY_FIELDS[key]
        try:
            encoded = value.encode("gbk")
        except UnicodeEncodeError:
            raise CameraProtocolError(device, "identify", f"{IDENTITY_FILE}: {key} is not GBK text") from None
        if len(encoded) > width or any(not char.isprintable() for char in value):
            raise CameraProtocolError(
                device, "identify", f"{IDENTITY_FILE}: {key} exceeds {width} bytes or has controls"
            )
        values[field] = value
    if not values.get("device_serial"):
        raise CameraProtocolError(device, "identify", f"{IDENTITY_FILE} has no cSerial")
    return CameraIdentity(
        device_serial=values["device_serial"],
        officer_no=values.get("officer_no", ""),
        officer_name=values.get("officer_name", ""),
        unit_no=values.get("unit_no", ""),
        unit_name=values.get("unit_name", ""),
        source="identity-file",
    )


def _read_identity_file(volume: Path, device: str) -> bytes | None:
    """The identity file's bytes (name matched case-insensitively, never through a symlink)."""
    wanted = IDENTITY_FILE.lower().encode()
    with os.scandir(os.fsencode(volume)) as listing:
        path = next((entry.path for entry in listing if entry.name.lower() == wanted), None)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise CameraProtocolError(device, "identify", f"{IDENTITY_FILE}: {error.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise CameraProtocolError(device, "identify", f"{IDENTITY_FILE} is not a regular file")
        data = handle.read(IDENTITY_MAX_BYTES + 1)
    if len(data) > IDENTITY_MAX_BYTES:
        raise CameraProtocolError(
            device, "identify", f"{IDENTITY_FILE} is larger than {IDENTITY_MAX_BYTES} bytes"
        )
    return data


class MassStorageCamera(CameraLink):
    """A camera seen only as a volume: a block device to mount, or an already-mounted directory."""

    def __init__(self, device: DeviceInfo, options: DriverOptions) -> None:
        if device.block is None and device.directory is None:
            raise Unsupported(f"msc:{device.port}", "open", "no block device and no mounted directory")
        self.device = device
        self.options = options
        self.name = f"msc:{device.block}" if device.block is not None else f"msc:{device.directory}"
        self._mounted: Path | None = None
        self._held = contextlib.ExitStack()  # unmounts what `_hold_mount` mounted
        self._in_use = False  # a `mounted_volume` block is open

    def _unsupported(self, command: str) -> Unsupported:
        return Unsupported(self.name, command, "a mass-storage camera has no control channel")

    def identify(self) -> CameraIdentity:
        with self._volume("identify") as volume:
            data = _read_identity_file(volume, self.name)
        usb_serial = self.device.properties.get("ID_SERIAL_SHORT", "").strip()
        if data is not None:
            identity = parse_identity_file(data, self.name)
            if usb_serial and usb_serial != identity.device_serial:
                log.warning(
                    "camera.serial_mismatch",
                    device=self.name,
                    identity_file=identity.device_serial,
                    usb_serial=usb_serial,
                )
            return identity
        if usb_serial:
            return CameraIdentity(
                device_serial=usb_serial,
                officer_no="",
                officer_name="",
                unit_no="",
                unit_name="",
                source="usb-serial",
            )
        raise Unsupported(self.name, "identify", f"no {IDENTITY_FILE} on the volume and no ID_SERIAL_SHORT")

    def read_clock(self) -> ClockSample:
        raise self._unsupported("read_clock")

    def set_clock(self, when: datetime) -> None:
        raise self._unsupported("set_clock")

    def battery(self) -> Battery:
        raise self._unsupported("battery")

    def resolution(self) -> Resolution:
        raise self._unsupported("resolution")

    def sync_clock(self, samples: int = 5) -> ClockSync:
        return ClockSync(offset_s=None, round_trip_s=None, state=ClockSyncState.UNSUPPORTED)

    def enter_mass_storage(self) -> None:
        """Already a mass-storage device: nothing to switch."""

    def storage(self) -> StorageInfo:
        with self._volume("storage") as volume:
            usage = os.statvfs(volume)
        return StorageInfo(
            total_bytes=usage.f_blocks * usage.f_frsize, free_bytes=usage.f_bavail * usage.f_frsize
        )

    def _hold_mount(self, command: str) -> Path:
        """The volume, mounted on first use and held until the session's `mounted_volume` block ends
        or the camera is closed: one read-only mount serves identify, storage, scan and copy. An
        unplugged camera is `DeviceGone`, not a volume that failed to mount."""
        if self._mounted is not None:
            return self._mounted
        held = contextlib.ExitStack()
        if self.device.directory is not None:
            volume = self.device.directory
        elif self.device.block is not None:
            block = self.device.block
            try:
                volume = held.enter_context(
                    mount_readonly(
                        block,
                        device_name=self.name,
                        fstypes=self.options.filesystems,
                        diskseq=self.device.properties.get(DISKSEQ),
                    )
                )
            except MountError:
                if self.present():
                    raise
                raise DeviceGone(self.name, command, f"{block} is gone (unplugged)") from None
        else:
            raise Unsupported(self.name, "mount", "no block device and no mounted directory")
        self._held, self._mounted = held, volume
        return volume

    @contextlib.contextmanager
    def _volume(self, command: str) -> Iterator[Path]:
        yield self._hold_mount(command)

    @contextlib.contextmanager
    def _mount(self) -> Iterator[Path]:
        if self._in_use:
            raise Unsupported(self.name, "mount", "the volume is already mounted by this camera")
        volume = self._hold_mount("mount")
        held, self._in_use = self._held, True
        try:
            with held:  # the unmount sees how the block ended, so it never masks its exception
                yield volume
        finally:
            self._held, self._mounted, self._in_use = contextlib.ExitStack(), None, False

    def mounted_volume(self) -> contextlib.AbstractContextManager[Path]:
        return self._mount()

    def present(self) -> bool:
        if self.device.directory is not None:
            return self.device.directory.is_dir()
        return self.device.block is not None and block_device_present(self.device.block)

    def delete_originals(self, volume: Path, files: list[OriginalFile]) -> list[Deletion]:
        # Our own read-only mount is made writable for the deletion only; a directory is as it is.
        return delete_recordings(volume, files, device_name=self.name, remount=self.device.directory is None)

    def close(self) -> None:
        """Unmount the volume if identify or storage mounted it and no session block took it over."""
        held, self._held, self._mounted = self._held, contextlib.ExitStack(), None
        held.close()


class MassStorageDriver(Driver):
    name: ClassVar[str] = "mass-storage"

    def open(self, device: DeviceInfo, options: DriverOptions) -> CameraLink:
        return MassStorageCamera(device, options)
