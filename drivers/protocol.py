"""Frames and payloads of the serial control channel (see PROTOCOL.md), with no I/O.

Everything here is pure: bytes in, values out. Decoding never trusts the peer: a malformed frame or
field raises `FrameError` or `FieldError` naming what was wrong, and the streaming decoder survives any
byte sequence without growing beyond one maximum frame.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from drivers.base import Battery, CameraIdentity, Resolution, StorageInfo

MAGIC = b"\xa5\x5a"
HEADER_SIZE = 6  # magic, length u16, seq u8, code u8
CRC_SIZE = 2
MAX_PAYLOAD = 256
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
REPLY_BIT = 0x80
MAX_DETAIL = 64
PASSWORD_LENGTH = 6

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class FrameError(ValueError):
    """A frame or reply that the protocol does not allow."""


class FieldError(ValueError):
    """A value that does not fit its wire field (too long, wrong charset, out of range)."""


class Command(enum.IntEnum):
    INIT_DEVICE = 0x01
    GET_ID_CODE = 0x02
    GET_ZFY_INFO = 0x03
    WRITE_ZFY_INFO = 0x04
    READ_TIME = 0x05
    SET_TIME = 0x06
    SET_MSDC = 0x07
    READ_RESOLUTION = 0x08
    READ_BATTERY = 0x09
    READ_STORAGE = 0x0A

    @property
    def label(self) -> str:
        """The GA/T 947.4 function name, for error messages."""
        return _LABELS[self]

    @property
    def idempotent(self) -> bool:
        """Whether a blind resend is harmless. Setting the clock is not: a late resend sets a stale time."""
        return self is not Command.SET_TIME


_LABELS = {
    Command.INIT_DEVICE: "Init_Device",
    Command.GET_ID_CODE: "GetIDCode",
    Command.GET_ZFY_INFO: "GetZFYInfo",
    Command.WRITE_ZFY_INFO: "WriteZFYInfo",
    Command.READ_TIME: "SyncDevTime(read)",
    Command.SET_TIME: "SyncDevTime(set)",
    Command.SET_MSDC: "SetMSDC",
    Command.READ_RESOLUTION: "ReadDeviceResolution",
    Command.READ_BATTERY: "ReadDeviceBatteryDumpEnergy",
    Command.READ_STORAGE: "ReadStorage",
}


class Status(enum.IntEnum):
    OK = 0x00
    BAD_PASSWORD = 0x01
    NOT_AUTHENTICATED = 0x02
    BAD_COMMAND = 0x03
    BAD_CRC = 0x04
    BAD_LENGTH = 0x05
    BUSY = 0x06
    MSC_MODE = 0x07
    BAD_VALUE = 0x08
    LOCKED = 0x09


@dataclass(frozen=True)
class Frame:
    seq: int
    code: int
    payload: bytes = b""


def crc16_ccitt(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final xor."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def encode_frame(seq: int, code: int, payload: bytes = b"") -> bytes:
    if not 0 <= seq <= 0xFF or not 0 <= code <= 0xFF:
        raise FieldError(f"seq {seq} and code {code} must each fit in one byte")
    if len(payload) > MAX_PAYLOAD:
        raise FieldError(f"payload of {len(payload)} bytes exceeds the maximum of {MAX_PAYLOAD}")
    body = struct.pack(">HBB", len(payload), seq, code) + payload
    return MAGIC + body + struct.pack(">H", crc16_ccitt(body))


@dataclass(frozen=True)
class Rejection:
    """Bytes the decoder threw away, and why: "garbage", "length" (over-long header) or "crc"."""

    reason: str
    size: int
    seq: int | None = None
    code: int | None = None


@dataclass
class FrameDecoder:
    """Streaming decoder that resynchronises after garbage.

    Feed it whatever the tty returns; it yields each valid frame exactly once, in order. Its buffer
    never holds more than one maximum frame plus the last read, so a peer spewing bytes cannot make it grow.
    """

    max_payload: int = MAX_PAYLOAD
    rejections: list[Rejection] = field(default_factory=list)
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while True:
            frame = self._next()
            if frame is None:
                return frames
            frames.append(frame)

    @property
    def pending(self) -> int:
        """Bytes of a possible frame still waiting for the rest (a truncated frame, if none comes)."""
        return len(self._buffer)

    def drain_rejections(self) -> list[Rejection]:
        drained, self.rejections = self.rejections, []
        return drained

    def reset(self) -> None:
        self._buffer.clear()
        self.rejections.clear()

    def _discard(self, count: int, rejection: Rejection) -> None:
        del self._buffer[:count]
        self.rejections.append(rejection)

    def _next(self) -> Frame | None:
        buf = self._buffer
        while True:
            start = buf.find(MAGIC)
            if start < 0:
                # Keep a trailing first magic byte: the second may arrive in the next read.
                keep = 1 if buf[-1:] == MAGIC[:1] else 0
                if len(buf) > keep:
                    self._discard(len(buf) - keep, Rejection("garbage", len(buf) - keep))
                return None
            if start > 0:
                self._discard(start, Rejection("garbage", start))
            if len(buf) < HEADER_SIZE:
                return None
            length, seq, code = struct.unpack_from(">HBB", buf, 2)
            if length > self.max_payload:
                self._discard(1, Rejection("length", 1, seq, code))
                continue
            total = HEADER_SIZE + length + CRC_SIZE
            if len(buf) < total:
                later = self._complete_frame_after(1)
                if later is None:
                    return None
                self._discard(later, Rejection("garbage", later, seq, code))
                continue
            (crc,) = struct.unpack_from(">H", buf, HEADER_SIZE + length)
            if crc != crc16_ccitt(bytes(buf[2 : HEADER_SIZE + length])):
                self._discard(1, Rejection("crc", 1, seq, code))
                continue
            frame = Frame(seq, code, bytes(buf[HEADER_SIZE : HEADER_SIZE + length]))
            del buf[:total]
            return frame

    def _complete_frame_after(self, offset: int) -> int | None:
        """Where a complete, CRC-valid frame starts at or after `offset`, if the buffer holds one."""
        buf = self._buffer
        start = buf.find(MAGIC, offset)
        while start >= 0:
            if len(buf) - start >= HEADER_SIZE:
                (length,) = struct.unpack_from(">H", buf, start + 2)
                end = start + HEADER_SIZE + length
                if length <= self.max_payload and len(buf) >= end + CRC_SIZE:
                    (crc,) = struct.unpack_from(">H", buf, end)
                    if crc == crc16_ccitt(bytes(buf[start + 2 : end])):
                        return start
            start = buf.find(MAGIC, start + 1)
        return None


# Replies


def encode_reply(seq: int, command: int, status: Status, data: bytes = b"") -> bytes:
    return encode_frame(seq, command | REPLY_BIT, bytes([status]) + data)


def encode_error_reply(seq: int, command: int, status: Status, detail: str = "") -> bytes:
    return encode_reply(seq, command, status, detail.encode("utf-8")[:MAX_DETAIL])


def decode_reply(frame: Frame, command: Command) -> tuple[Status, bytes]:
    """Split a reply into its status and data, checking it answers `command`."""
    if frame.code != command | REPLY_BIT:
        raise FrameError(f"reply code 0x{frame.code:02x} does not answer command 0x{command:02x}")
    if not frame.payload:
        raise FrameError("reply has no status byte")
    try:
        status = Status(frame.payload[0])
    except ValueError:
        raise FrameError(f"unknown status 0x{frame.payload[0]:02x}") from None
    return status, frame.payload[1:]


def error_detail(data: bytes) -> str:
    """The peer's optional error text, made safe to log."""
    return data[:MAX_DETAIL].decode("utf-8", errors="replace")


# Fields


def encode_text(value: str, width: int, *, encoding: str, name: str) -> bytes:
    """Encode `value` into a NUL-padded field of `width` bytes, or say exactly why it does not fit."""
    if "\x00" in value:
        raise FieldError(f"{name}: text must not contain NUL")
    try:
        raw = value.encode(encoding)
    except UnicodeEncodeError as exc:
        bad = value[exc.start : exc.end]
        raise FieldError(f"{name}: {bad!r} cannot be encoded in {encoding.upper()}") from None
    if len(raw) > width:
        raise FieldError(
            f"{name}: {value!r} is {len(raw)} bytes in {encoding.upper()}; the field holds {width}"
        )
    return raw.ljust(width, b"\x00")


def decode_text(raw: bytes, *, encoding: str, name: str) -> str:
    """Decode a NUL-padded field; text ends at the first NUL (cameras may leave junk after it)."""
    text = raw.split(b"\x00", 1)[0]
    try:
        return text.decode(encoding)
    except UnicodeDecodeError:
        raise FieldError(f"{name}: bytes {text.hex()} are not valid {encoding.upper()}") from None


# (name, width, encoding) in wire order; widths are GA/T 947.4's.
ZFY_FIELDS: tuple[tuple[str, int, str], ...] = (
    ("cSerial", 7, "ascii"),
    ("userNo", 6, "ascii"),
    ("userName", 32, "gbk"),
    ("unitNo", 12, "ascii"),
    ("unitName", 32, "gbk"),
)
ZFY_INFO_SIZE = sum(width for _, width, _ in ZFY_FIELDS)


def encode_zfy_info(identity: CameraIdentity) -> bytes:
    values = (
        identity.device_serial,
        identity.officer_no,
        identity.officer_name,
        identity.unit_no,
        identity.unit_name,
    )
    return b"".join(
        encode_text(value, width, encoding=encoding, name=name)
        for value, (name, width, encoding) in zip(values, ZFY_FIELDS, strict=True)
    )


def decode_zfy_info(raw: bytes) -> CameraIdentity:
    if len(raw) != ZFY_INFO_SIZE:
        raise FieldError(f"ZFY_INFO is {len(raw)} bytes; expected {ZFY_INFO_SIZE}")
    values: list[str] = []
    offset = 0
    for name, width, encoding in ZFY_FIELDS:
        values.append(decode_text(raw[offset : offset + width], encoding=encoding, name=name))
        offset += width
    serial, officer_no, officer_name, unit_no, unit_name = values
    return CameraIdentity(serial, officer_no, officer_name, unit_no, unit_name)


def encode_serial(serial: str) -> bytes:
    return encode_text(serial, 7, encoding="ascii", name="cSerial")


def decode_serial(raw: bytes) -> str:
    if len(raw) != 7:
        raise FieldError(f"ID code is {len(raw)} bytes; expected 7")
    return decode_text(raw, encoding="ascii", name="cSerial")


def encode_password(password: str) -> bytes:
    if len(password) != PASSWORD_LENGTH or not password.isascii() or not password.isprintable():
        raise FieldError(f"password must be {PASSWORD_LENGTH} printable ASCII characters")
    return password.encode("ascii")


def encode_time(when: datetime) -> bytes:
    """Milliseconds since the epoch, UTC. A naive datetime is refused: its zone would be a guess."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise FieldError(f"time {when.isoformat()} has no timezone")
    millis = round((when - EPOCH) / timedelta(milliseconds=1))
    try:
        return struct.pack(">q", millis)
    except struct.error:
        raise FieldError(f"time {when.isoformat()} is out of range") from None


def decode_time(raw: bytes) -> datetime:
    if len(raw) != 8:
        raise FieldError(f"time is {len(raw)} bytes; expected 8")
    (millis,) = struct.unpack(">q", raw)
    try:
        return EPOCH + timedelta(milliseconds=millis)
    except OverflowError:
        raise FieldError(f"time {millis} ms since the epoch is out of range") from None


def encode_resolution(resolution: Resolution) -> bytes:
    try:
        return struct.pack(">HH", resolution.width, resolution.height)
    except struct.error:
        raise FieldError(f"resolution {resolution.width}x{resolution.height} is out of range") from None


def decode_resolution(raw: bytes) -> Resolution:
    if len(raw) != 4:
        raise FieldError(f"resolution is {len(raw)} bytes; expected 4")
    width, height = struct.unpack(">HH", raw)
    return Resolution(width, height)


def encode_battery(battery: Battery) -> bytes:
    if not 0 <= battery.percent <= 100:
        raise FieldError(f"battery {battery.percent}% is outside 0..100")
    return bytes([battery.percent, 1 if battery.charging else 0])


def decode_battery(raw: bytes) -> Battery:
    if len(raw) != 2:
        raise FieldError(f"battery is {len(raw)} bytes; expected 2")
    percent, flags = raw
    if percent > 100:
        raise FieldError(f"battery {percent}% is outside 0..100")
    return Battery(percent=percent, charging=bool(flags & 1))


def encode_storage(storage: StorageInfo) -> bytes:
    if not 0 <= storage.free_bytes <= storage.total_bytes:
        raise FieldError(f"free {storage.free_bytes} must be within 0..total {storage.total_bytes}")
    try:
        return struct.pack(">QQ", storage.total_bytes, storage.free_bytes)
    except struct.error:
        raise FieldError(f"storage {storage.total_bytes} bytes is out of range") from None


def decode_storage(raw: bytes) -> StorageInfo:
    if len(raw) != 16:
        raise FieldError(f"storage is {len(raw)} bytes; expected 16")
    total, free = struct.unpack(">QQ", raw)
    if free > total:
        raise FieldError(f"free bytes {free} exceed total {total}")
    return StorageInfo(total_bytes=total, free_bytes=free)
