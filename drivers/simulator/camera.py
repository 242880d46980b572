"""The simulated camera's control side: the protocol state machine behind the pty, without I/O.

It answers every request the way PROTOCOL.md says a camera must, including the refusals (wrong
password, lockout, not authenticated, mass-storage mode), so the driver's error paths are exercised
by the same code that serves the happy path. Transport faults live in the pty server.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from drivers import protocol as p
from drivers.base import Battery, CameraIdentity, Resolution, StorageInfo

MAX_PASSWORD_FAILURES = 3

_REQUEST_SIZES = {
    p.Command.INIT_DEVICE: p.PASSWORD_LENGTH,
    p.Command.WRITE_ZFY_INFO: p.ZFY_INFO_SIZE,
    p.Command.SET_TIME: 8,
}


def station_now() -> datetime:
    return datetime.now(UTC)


class SimulatedCamera:
    """One camera's state. Thread-safe: the pty server handles requests while tests inspect state.

    The camera clock is the station clock plus `drift_s`; setting the clock changes the drift.
    """

    def __init__(
        self,
        identity: CameraIdentity,
        *,
        password: str,
        drift_s: float = 0.0,
        battery: Battery = Battery(percent=80, charging=True),  # noqa: B008  # frozen value object
        storage: StorageInfo = StorageInfo(total_bytes=64 * 2**30, free_bytes=48 * 2**30),  # noqa: B008
        resolution: Resolution = Resolution(1920, 1080),  # noqa: B008
        usb_serial: str | None = None,
        clock: Callable[[], datetime] = station_now,
    ) -> None:
        p.encode_zfy_info(identity)  # refuse an identity the wire cannot carry, here, not per request
        p.encode_password(password)
        p.encode_battery(battery)
        p.encode_storage(storage)
        p.encode_resolution(resolution)
        self._lock = threading.Lock()
        self._identity = replace(identity, source="control-channel")
        self._password = password
        self._drift = timedelta(seconds=drift_s)
        self._clock = clock
        self.battery = battery
        self.storage = storage
        self.resolution = resolution
        self.usb_serial = usb_serial if usb_serial is not None else identity.device_serial
        self.authenticated = False
        self.msc_mode = False
        self.password_failures = 0
        self.requests = 0

    @property
    def identity(self) -> CameraIdentity:
        with self._lock:
            return self._identity

    @property
    def drift_s(self) -> float:
        with self._lock:
            return self._drift.total_seconds()

    def now(self) -> datetime:
        """What the camera clock reads now."""
        with self._lock:
            return self._clock() + self._drift

    def set_drift(self, drift_s: float) -> None:
        with self._lock:
            self._drift = timedelta(seconds=drift_s)

    def end_session(self) -> None:
        """The host closed the tty: like a dropped DTR (the camera was taken out of the dock), the next
        session must authenticate again and finds the camera back in its normal, non-storage mode."""
        with self._lock:
            self.authenticated = False
            self.msc_mode = False

    def handle(self, frame: p.Frame) -> bytes:
        """The encoded reply to one request frame."""
        with self._lock:
            self.requests += 1
            status, data = self._dispatch(frame)
        if status is p.Status.OK:
            return p.encode_reply(frame.seq, frame.code, status, data)
        return p.encode_error_reply(frame.seq, frame.code, status, data.decode("utf-8", "replace"))

    def crc_failure(self, seq: int, code: int) -> bytes:
        """The reply to a request whose CRC failed: not executed, please resend."""
        return p.encode_error_reply(seq, code & ~p.REPLY_BIT, p.Status.BAD_CRC, "request CRC mismatch")

    def _dispatch(self, frame: p.Frame) -> tuple[p.Status, bytes]:
        try:
            command = p.Command(frame.code)
        except ValueError:
            return p.Status.BAD_COMMAND, f"unknown command 0x{frame.code:02x}".encode()
        if len(frame.payload) != _REQUEST_SIZES.get(command, 0):
            return p.Status.BAD_LENGTH, f"{len(frame.payload)} bytes".encode()
        if self.msc_mode:
            return p.Status.MSC_MODE, b"in mass-storage mode"
        if command is p.Command.INIT_DEVICE:
            return self._authenticate(frame.payload)
        if not self.authenticated:
            return p.Status.NOT_AUTHENTICATED, b"call Init_Device first"
        match command:
            case p.Command.GET_ID_CODE:
                return p.Status.OK, p.encode_serial(self._identity.device_serial)
            case p.Command.GET_ZFY_INFO:
                return p.Status.OK, p.encode_zfy_info(self._identity)
            case p.Command.WRITE_ZFY_INFO:
                try:
                    written = p.decode_zfy_info(frame.payload)
                except p.FieldError as exc:
                    return p.Status.BAD_VALUE, str(exc).encode()
                self._identity = written
                return p.Status.OK, b""
            case p.Command.READ_TIME:
                return p.Status.OK, p.encode_time(self._clock() + self._drift)
            case p.Command.SET_TIME:
                try:
                    when = p.decode_time(frame.payload)
                except p.FieldError as exc:
                    return p.Status.BAD_VALUE, str(exc).encode()
                self._drift = when - self._clock()
                return p.Status.OK, b""
            case p.Command.SET_MSDC:
                self.msc_mode = True
                return p.Status.OK, b""
            case p.Command.READ_RESOLUTION:
                return p.Status.OK, p.encode_resolution(self.resolution)
            case p.Command.READ_BATTERY:
                return p.Status.OK, p.encode_battery(self.battery)
            case p.Command.READ_STORAGE:
                return p.Status.OK, p.encode_storage(self.storage)

    def _authenticate(self, offered: bytes) -> tuple[p.Status, bytes]:
        if self.password_failures >= MAX_PASSWORD_FAILURES:
            return p.Status.LOCKED, b"too many wrong passwords"
        if hmac.compare_digest(offered, self._password.encode("ascii")):
            self.authenticated = True
            self.password_failures = 0
            return p.Status.OK, b""
        self.authenticated = False
        self.password_failures += 1
        return p.Status.BAD_PASSWORD, b"wrong password"
