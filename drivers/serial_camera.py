"""The serial driver: a camera's GA/T 947.4 functions over its tty (framing in PROTOCOL.md).

Guarantees: no call blocks past its deadline times its bounded attempts; only idempotent commands are
resent blind (setting the clock is resent only after reading it back); every failure is a
`DriverError` subclass naming the device and the GA/T 947.4 function; a tty that goes away mid-command
is `DeviceGone` at once.
"""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import serial

from drivers import protocol as p
from drivers.base import (
    DISKSEQ,
    AuthenticationFailed,
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
    DriverError,
    DriverOptions,
    DriverTimeout,
    OriginalFile,
    Resolution,
    StorageInfo,
    Unsupported,
)
from drivers.wipe import delete_recordings

T = TypeVar("T")

READ_CHUNK = 4096
READBACK_SAMPLES = 3


@dataclass(frozen=True)
class LinkSettings:
    """Deadlines and retry budget, from `DriverOptions.extra`; the defaults suit a USB CDC-ACM tty."""

    timeout_s: float = 0.5  # per attempt
    retries: int = 2  # extra attempts for idempotent commands, BUSY and BAD_CRC
    busy_backoff_s: float = 0.02
    max_clock_residual_s: float = 0.05

    @classmethod
    def from_options(cls, device: str, options: DriverOptions) -> LinkSettings:
        extra = options.extra
        try:
            settings = cls(
                timeout_s=float(extra.get("timeout_s", cls.timeout_s)),
                retries=int(extra.get("retries", cls.retries)),
                busy_backoff_s=float(extra.get("busy_backoff_s", cls.busy_backoff_s)),
                max_clock_residual_s=float(extra.get("max_clock_residual_s", cls.max_clock_residual_s)),
            )
        except (TypeError, ValueError) as exc:
            raise DriverError(device, "open", f"bad driver option: {exc}") from None
        if not (settings.timeout_s > 0 and 0 <= settings.retries <= 10 and settings.busy_backoff_s >= 0):
            raise DriverError(device, "open", f"driver options out of range: {settings}")
        return settings


class _ReplyLost(Exception):  # noqa: N818  # internal signal, never escapes this module
    """No valid reply to this attempt: resend if allowed, else raise `error`."""

    def __init__(self, error: DriverError) -> None:
        super().__init__(str(error))
        self.error = error


class SerialDriver(Driver):
    name = "serial"

    def ready(self, device: DeviceInfo) -> bool:
        """The control channel is enough: the volume may follow (real cameras show it after SetMSDC)."""
        return device.tty is not None

    def open(self, device: DeviceInfo, options: DriverOptions) -> SerialCamera:
        if device.tty is None:
            raise Unsupported(f"serial:{device.port}", "open", "the device has no control tty")
        camera = SerialCamera(device, options)
        try:
            camera.authenticate()
        except BaseException:
            camera.close()
            raise
        return camera


class SerialCamera(CameraLink):
    """An opened control channel. Call `authenticate()` first (the driver does)."""

    def __init__(self, device: DeviceInfo, options: DriverOptions) -> None:
        if device.tty is None:
            raise Unsupported(f"serial:{device.port}", "open", "the device has no control tty")
        self.name = f"serial:{device.tty}"
        self._device = device
        self._password = options.password
        self._filesystems = options.filesystems
        self._settings = LinkSettings.from_options(self.name, options)
        self._decoder = p.FrameDecoder()
        self._seq = 0
        self._exchange_times: tuple[datetime, datetime] | None = None
        self._in_mass_storage = False
        try:
            self._port: serial.Serial | None = serial.Serial(
                port=device.tty,
                baudrate=options.baud_rate,
                timeout=0,  # reads never block; deadlines are enforced with select
                write_timeout=self._settings.timeout_s,
                exclusive=True,
            )
            self._port.reset_input_buffer()  # stale bytes from an earlier session
        except ValueError as exc:
            raise Unsupported(self.name, "open", f"bad serial settings: {exc}") from None
        except (serial.SerialException, OSError) as exc:
            if not Path(device.tty).exists():
                raise DeviceGone(self.name, "open", f"cannot open the tty: {exc}") from None
            # Still there but refused (locked by another session, permissions): not gone.
            raise DriverError(self.name, "open", f"cannot open the tty: {exc}") from None

    # GA/T 947.4 functions

    def authenticate(self) -> None:
        """Init_Device with the configured password."""
        label = p.Command.INIT_DEVICE.label
        try:
            payload = p.encode_password(self._password)
        except p.FieldError as exc:
            raise AuthenticationFailed(self.name, label, f"configured {exc}") from None
        self._call(p.Command.INIT_DEVICE, payload)

    def id_code(self) -> str:
        """GetIDCode: the device serial as the camera reports it (compare with the USB serial)."""
        return self._decode(p.Command.GET_ID_CODE, p.decode_serial, self._call(p.Command.GET_ID_CODE))

    def identify(self) -> CameraIdentity:
        return self._decode(p.Command.GET_ZFY_INFO, p.decode_zfy_info, self._call(p.Command.GET_ZFY_INFO))

    def write_identity(self, identity: CameraIdentity) -> None:
        """WriteZFYInfo. Text that does not fit its field raises `protocol.FieldError` before sending."""
        self._call(p.Command.WRITE_ZFY_INFO, p.encode_zfy_info(identity))

    def read_clock(self) -> ClockSample:
        data = self._call(p.Command.READ_TIME)
        camera_time = self._decode(p.Command.READ_TIME, p.decode_time, data)
        assert self._exchange_times is not None  # noqa: S101  # set by every successful attempt
        sent_at, received_at = self._exchange_times
        return ClockSample(sent_at=sent_at, received_at=received_at, camera_time=camera_time)

    def set_clock(self, when: datetime) -> None:
        """Make the camera read `when` as of this call.

        Each attempt sends `when` advanced by the time elapsed since the call, so a resend never sets
        a stale time. A lost reply is resolved by reading the clock back, never by a blind resend.
        """
        p.encode_time(when)  # a naive time is the caller's bug: refuse it before touching the device
        started = time.monotonic()
        intended_offset_s = (when - datetime.now(UTC)).total_seconds()

        def payload() -> bytes:
            return p.encode_time(when + timedelta(seconds=time.monotonic() - started))

        def took_effect() -> bool:
            sample = self.read_clock()
            return abs(sample.offset_s - intended_offset_s) <= self._settings.max_clock_residual_s

        self._call(p.Command.SET_TIME, payload, took_effect=took_effect)

    def sync_clock(self, samples: int = 5) -> ClockSync:
        if samples < 1:
            raise ValueError(f"samples must be at least 1, not {samples}")
        best = min((self.read_clock() for _ in range(samples)), key=lambda s: s.round_trip_s)
        offset_s, round_trip_s = best.offset_s, best.round_trip_s
        try:
            # The set request reaches the camera about half a round trip after it is sent.
            self.set_clock(datetime.now(UTC) + timedelta(seconds=round_trip_s / 2))
            after = min((self.read_clock() for _ in range(READBACK_SAMPLES)), key=lambda s: s.round_trip_s)
        except DeviceGone:
            raise
        except DriverError:
            return ClockSync(offset_s, round_trip_s, ClockSyncState.MEASURED_ONLY)
        residual_s = after.offset_s
        synced = abs(residual_s) <= self._settings.max_clock_residual_s
        state = ClockSyncState.SYNCED if synced else ClockSyncState.MEASURED_ONLY
        return ClockSync(offset_s, round_trip_s, state, residual_s)

    def battery(self) -> Battery:
        return self._decode(p.Command.READ_BATTERY, p.decode_battery, self._call(p.Command.READ_BATTERY))

    def storage(self) -> StorageInfo:
        return self._decode(p.Command.READ_STORAGE, p.decode_storage, self._call(p.Command.READ_STORAGE))

    def resolution(self) -> Resolution:
        data = self._call(p.Command.READ_RESOLUTION)
        return self._decode(p.Command.READ_RESOLUTION, p.decode_resolution, data)

    def enter_mass_storage(self) -> None:
        """SetMSDC. The control channel refuses further commands afterwards."""
        self._call(p.Command.SET_MSDC)
        self._in_mass_storage = True

    @contextlib.contextmanager
    def mounted_volume(self) -> Iterator[Path]:
        """Switch to mass storage, then yield the volume: an already-mounted directory as it is, a
        block device mounted read-only by `drivers.mount`."""
        if self._device.directory is None and self._device.block is None:
            raise Unsupported(self.name, "mount", "the device has neither a block device nor a directory")
        if not self._in_mass_storage:
            self.enter_mass_storage()
        if self._device.directory is not None:
            yield self._device.directory
            return
        assert self._device.block is not None  # noqa: S101  # checked above
        from drivers.mount import mount_readonly  # noqa: PLC0415  # only the block path needs mounting

        diskseq = self._device.properties.get(DISKSEQ)
        block = self._device.block
        with mount_readonly(block, device_name=self.name, fstypes=self._filesystems, diskseq=diskseq) as path:
            yield path

    def delete_originals(self, volume: Path, files: list[OriginalFile]) -> list[Deletion]:
        # Our own read-only mount is made writable for the deletion only; a directory is as it is.
        return delete_recordings(volume, files, device_name=self.name, remount=self._device.directory is None)

    def needs_storage(self) -> bool:
        return self._device.block is None and self._device.directory is None

    def attach_storage(self, block: str, disk_sequence: str | None = None) -> None:
        """The volume that appeared after the dock (the port's late disk, or the camera's disk once it
        re-enumerated in mass-storage mode). Its arrival is the camera being in mass storage."""
        properties = {**self._device.properties}
        properties.pop(DISKSEQ, None)
        if disk_sequence is not None:
            properties[DISKSEQ] = disk_sequence
        self._device = replace(self._device, block=block, properties=properties)
        self._in_mass_storage = True

    def present(self) -> bool:
        """Whether the node this session now depends on exists: the volume once the camera is in
        mass storage (real cameras may drop their tty then), else the tty. Sends no command."""
        if self._in_mass_storage and self._device.block is not None:
            from drivers.mount import block_device_present, disk_sequence  # noqa: PLC0415 - load on use

            expected = self._device.properties.get(DISKSEQ)
            if expected is not None and disk_sequence(self._device.block) != expected:
                return False  # its node now names another disk (a re-enumerated one), or none
            return block_device_present(self._device.block)
        if self._in_mass_storage and self._device.directory is not None:
            return self._device.directory.is_dir()
        return self._device.tty is not None and Path(self._device.tty).exists()

    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()

    # The link

    def _decode(self, command: p.Command, decode: Callable[[bytes], T], data: bytes) -> T:
        try:
            return decode(data)
        except p.FieldError as exc:
            raise CameraProtocolError(self.name, command.label, f"bad reply data: {exc}") from None

    def _call(
        self,
        command: p.Command,
        payload: bytes | Callable[[], bytes] = b"",
        *,
        took_effect: Callable[[], bool] | None = None,
    ) -> bytes:
        """Run one command to completion and return its reply data, resending as PROTOCOL.md allows."""
        label = command.label
        budget = self._settings.retries
        readback_resends = 1
        may_reauthenticate = command is not p.Command.INIT_DEVICE
        while True:
            try:
                status, data = self._attempt(command, payload() if callable(payload) else payload)
            except _ReplyLost as lost:
                if command.idempotent and budget > 0:
                    budget -= 1
                    continue
                if took_effect is not None:
                    if took_effect():
                        return b""
                    if readback_resends > 0:
                        readback_resends -= 1
                        continue
                raise lost.error from None
            detail = p.error_detail(data)
            match status:
                case p.Status.OK:
                    return data
                case p.Status.BUSY | p.Status.BAD_CRC if budget > 0:
                    # Not executed, so safe to resend whatever the command.
                    budget -= 1
                    if status is p.Status.BUSY:
                        time.sleep(self._settings.busy_backoff_s)
                    continue
                case p.Status.BUSY:
                    raise DriverTimeout(self.name, label, "device stayed busy through every retry")
                case p.Status.BAD_CRC:
                    raise CameraProtocolError(
                        self.name, label, "device kept reporting a request CRC mismatch"
                    )
                case p.Status.NOT_AUTHENTICATED if may_reauthenticate:
                    may_reauthenticate = False  # the camera may have restarted: log in again, once
                    self.authenticate()
                    continue
                case p.Status.MSC_MODE if command is p.Command.SET_MSDC:
                    return b""  # an earlier attempt already switched it
                case p.Status.BAD_PASSWORD:
                    raise AuthenticationFailed(self.name, label, f"password refused ({detail})")
                case p.Status.LOCKED:
                    raise AuthenticationFailed(self.name, label, f"device locked ({detail})")
                case p.Status.NOT_AUTHENTICATED:
                    raise AuthenticationFailed(self.name, label, f"not authenticated ({detail})")
                case p.Status.BAD_COMMAND:
                    raise Unsupported(self.name, label, f"device does not support it ({detail})")
                case p.Status.MSC_MODE:
                    raise CameraProtocolError(self.name, label, "device is in mass-storage mode")
                case _:
                    raise CameraProtocolError(self.name, label, f"device answered {status.name} ({detail})")

    def _attempt(self, command: p.Command, payload: bytes) -> tuple[p.Status, bytes]:
        """One request and its reply, within one deadline. Late replies to earlier attempts are dropped."""
        port = self._require_port(command)
        label = command.label
        self._seq = (self._seq + 1) & 0xFF
        seq = self._seq
        self._decoder.drain_rejections()
        corrupt = False
        sent_at = datetime.now(UTC)
        deadline = time.monotonic() + self._settings.timeout_s
        try:
            port.write(p.encode_frame(seq, command, payload))
        except serial.SerialTimeoutException:
            raise DriverTimeout(self.name, label, "the tty would not accept the request") from None
        except (serial.SerialException, OSError) as exc:
            raise DeviceGone(self.name, label, f"tty write failed: {exc}") from None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _ReplyLost(self._lost_error(label, corrupt))
            frames = self._decoder.feed(self._read(port, label, remaining))
            received_at = datetime.now(UTC)
            corrupt = corrupt or any(r.reason == "crc" for r in self._decoder.drain_rejections())
            for frame in frames:
                if frame.seq != seq:
                    continue
                try:
                    reply = p.decode_reply(frame, command)
                except p.FrameError as exc:
                    raise CameraProtocolError(self.name, label, str(exc)) from None
                self._exchange_times = (sent_at, received_at)
                return reply
            if corrupt and self._decoder.pending < len(p.MAGIC):
                raise _ReplyLost(self._lost_error(label, corrupt))  # the reply was the corrupt frame

    def _lost_error(self, label: str, corrupt: bool) -> DriverError:
        pending = self._decoder.pending
        if pending >= len(p.MAGIC):
            return CameraProtocolError(
                self.name, label, f"truncated reply: {pending} bytes of an incomplete frame"
            )
        if corrupt:
            return CameraProtocolError(self.name, label, "reply failed its CRC check")
        return DriverTimeout(self.name, label, f"no reply within {self._settings.timeout_s:.2f} s")

    def _read(self, port: serial.Serial, label: str, remaining: float) -> bytes:
        try:
            ready, _, _ = select.select([port.fileno()], [], [], remaining)
            if not ready:
                return b""
            return bytes(port.read(max(1, min(port.in_waiting, READ_CHUNK))))
        except (serial.SerialException, OSError) as exc:
            raise DeviceGone(self.name, label, f"tty read failed (device gone?): {exc}") from None

    def _require_port(self, command: p.Command) -> serial.Serial:
        if self._port is None:
            raise DeviceGone(self.name, command.label, "the control channel is closed")
        return self._port
