"""The MP4/MOV movie-header (`mvhd`) creation time, read from the box headers alone.

The reader seeks from box header to box header and reads only the `mvhd` payload, so it never touches
media data and its work is bounded on hostile or truncated files: at most `MAX_BOXES` headers per level,
every step moves strictly forward, and nothing is read past the end of the file. Any malformed input
gives `None`, never an exception other than `OSError` from the file itself.

The writer produces the smallest structurally valid file (ftyp, moov/mvhd, mdat) for the simulator.
"""

from __future__ import annotations

import os
import random
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

MP4_EPOCH = datetime(1904, 1, 1, tzinfo=UTC)
MAX_BOXES = 1024  # per nesting level; real files have a handful of top-level boxes and moov children
_MVHD_READ = 32  # version/flags + creation + modification + timescale + duration, version 1
_U32_MAX = 0xFFFFFFFF
_CHUNK = 1024 * 1024

# Camera firmware with an unset clock writes 0 (1904) or the Unix epoch; neither is a recording time.
_EARLIEST_PLAUSIBLE = datetime(1970, 1, 2, tzinfo=UTC)


def _box_header(handle: BinaryIO, position: int, limit: int) -> tuple[bytes, int, int] | None:
    """Return (type, header length, box end) of the box at `position`, or None if it is malformed."""
    if limit - position < 8:
        return None
    handle.seek(position)
    head = handle.read(8)
    if len(head) < 8:
        return None
    size, box_type = struct.unpack(">I4s", head)
    header = 8
    if size == 1:
        large = handle.read(8)
        if len(large) < 8:
            return None
        (size,) = struct.unpack(">Q", large)
        header = 16
    elif size == 0:
        size = limit - position  # the box runs to the end of its container
    if size < header:
        return None
    # A box claiming more than its container holds is truncated: clamp, so reading stays in bounds.
    return box_type, header, min(position + size, limit)


def _find_box(handle: BinaryIO, start: int, end: int, wanted: bytes) -> tuple[int, int] | None:
    """Find the first `wanted` box between `start` and `end`: (payload start, payload end)."""
    position = start
    for _ in range(MAX_BOXES):
        found = _box_header(handle, position, end)
        if found is None:
            return None
        box_type, header, box_end = found
        if box_type == wanted:
            return position + header, box_end
        if box_end <= position:  # cannot happen with size >= header, kept as the loop's guarantee
            return None
        position = box_end
    return None


@dataclass(frozen=True)
class MovieHeader:
    """What `mvhd` says of the whole recording: when it was made (UTC, None if unset) and how long it is."""

    created_at: datetime | None
    duration_s: float | None


def movie_header_from_handle(handle: BinaryIO) -> MovieHeader | None:
    """The `mvhd` fields of an open, seekable file, or None when there is no readable `mvhd`."""
    end = handle.seek(0, os.SEEK_END)
    moov = _find_box(handle, 0, end, b"moov")
    if moov is None:
        return None
    mvhd = _find_box(handle, moov[0], moov[1], b"mvhd")
    if mvhd is None:
        return None
    payload_start, payload_end = mvhd
    handle.seek(payload_start)
    payload = handle.read(min(_MVHD_READ, payload_end - payload_start))
    if len(payload) < 8:
        return None
    version = payload[0]
    timescale: int | None = None
    duration: int | None = None
    if version == 0:
        (seconds,) = struct.unpack_from(">I", payload, 4)
        if len(payload) >= 20:
            timescale, duration = struct.unpack_from(">II", payload, 12)
    elif version == 1 and len(payload) >= 12:
        (seconds,) = struct.unpack_from(">Q", payload, 4)
        if len(payload) >= 32:
            timescale, duration = struct.unpack_from(">IQ", payload, 20)
    else:
        return None
    try:
        created: datetime | None = MP4_EPOCH + timedelta(seconds=seconds)
    except OverflowError:
        created = None
    if created is not None and created < _EARLIEST_PLAUSIBLE:
        created = None
    # An all-ones duration means "unknown" in ISO/IEC 14496-12; a zero timescale is a broken header.
    unknown = duration in (None, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF) or not timescale
    duration_s = None if unknown or duration is None or timescale is None else duration / timescale
    return MovieHeader(created, duration_s)


def creation_time_from_handle(handle: BinaryIO) -> datetime | None:
    """The `mvhd` creation time of an open, seekable file as UTC, or None if absent or unset."""
    header = movie_header_from_handle(handle)
    return header.created_at if header is not None else None


def read_creation_time(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> datetime | None:
    """The `mvhd` creation time of the file at `path` (not following a final symlink)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        return creation_time_from_handle(handle)


def _box(box_type: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), box_type) + payload


def _mvhd(created_at: datetime, duration_s: float, version: int) -> bytes:
    seconds = int((created_at - MP4_EPOCH).total_seconds())
    timescale = 1000
    duration = round(duration_s * timescale)
    if version == 0:
        times = struct.pack(">IIII", seconds, seconds, timescale, duration)
    else:
        times = struct.pack(">QQIQ", seconds, seconds, timescale, duration)
    matrix = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    tail = struct.pack(">IH10x", 0x10000, 0x100) + matrix + bytes(24) + struct.pack(">I", 2)
    return _box(b"mvhd", bytes([version, 0, 0, 0]) + times + tail)


_FTYP = _box(b"ftyp", b"isom" + struct.pack(">I", 0x200) + b"isomiso2mp41")


def overhead_bytes(*, mvhd_version: int = 0, large_mdat: bool = False) -> int:
    """How many bytes `write_mp4` adds around the payload, so callers can hit an exact file size."""
    mvhd = 108 if mvhd_version == 0 else 120
    return len(_FTYP) + 8 + mvhd + (16 if large_mdat else 8)


def write_mp4(
    path: str | os.PathLike[str],
    *,
    created_at: datetime,
    payload_size: int,
    duration_s: float,
    mvhd_version: int | None = None,
    large_mdat: bool = False,
    moov_first: bool = False,
    seed: int | None = None,
) -> int:
    """Write a minimal MP4 whose `mvhd` says `created_at`; return the file size.

    The payload is pseudo-random (distinct per `seed`, so a content-addressed store never
    deduplicates two simulated recordings) and written in 1 MiB chunks, so memory stays flat.
    By default `moov` follows `mdat`, as cameras write it when they close a recording.
    """
    if created_at.tzinfo is None:
        raise ValueError("created_at must be timezone-aware")
    if payload_size < 0:
        raise ValueError("payload_size must not be negative")
    seconds = int((created_at - MP4_EPOCH).total_seconds())
    if seconds < 0:
        raise ValueError("created_at is before the MP4 epoch (1904-01-01)")
    if mvhd_version is None:
        mvhd_version = 0 if seconds <= _U32_MAX else 1
    if mvhd_version not in (0, 1) or (mvhd_version == 0 and seconds > _U32_MAX):
        raise ValueError(f"mvhd version {mvhd_version} cannot hold {created_at.isoformat()}")
    large_mdat = large_mdat or payload_size + 8 > _U32_MAX
    moov = _box(b"moov", _mvhd(created_at, duration_s, mvhd_version))
    if large_mdat:
        mdat_header = struct.pack(">I4sQ", 1, b"mdat", 16 + payload_size)
    else:
        mdat_header = struct.pack(">I4s", 8 + payload_size, b"mdat")
    rng = random.Random(seed if seed is not None else seconds * 1_000_003 + payload_size)  # noqa: S311 - filler bytes, not secrets
    with open(path, "wb") as out:  # noqa: PTH123 - accepts any path-like, like os.open
        out.write(_FTYP)
        if moov_first:
            out.write(moov)
        out.write(mdat_header)
        remaining = payload_size
        while remaining > 0:
            step = min(_CHUNK, remaining)
            out.write(rng.randbytes(step))
            remaining -= step
        if not moov_first:
            out.write(moov)
        return out.tell()
