"""The mvhd reader on the simulator's files, on every truncation, and on boxes that lie about sizes."""

from __future__ import annotations

import io
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drivers.mp4 import (
    MAX_BOXES,
    MP4_EPOCH,
    MovieHeader,
    creation_time_from_handle,
    movie_header_from_handle,
    overhead_bytes,
    read_creation_time,
    write_mp4,
)

WHEN = datetime(2026, 11, 22, 0, 30, 15, tzinfo=UTC)


class CountingFile(io.FileIO):
    """A real file that counts the bytes handed out, to prove media data is never read."""

    bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def mvhd_seconds(when: datetime) -> int:
    return int((when - MP4_EPOCH).total_seconds())


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("moov_first", [False, True])
@pytest.mark.parametrize("large_mdat", [False, True])
def test_written_file_round_trips_creation_time_and_size(
    tmp_path: Path, version: int, moov_first: bool, large_mdat: bool
) -> None:
    path = tmp_path / "a.mp4"
    size = write_mp4(
        path,
        created_at=WHEN,
        payload_size=3000,
        duration_s=61.5,
        mvhd_version=version,
        moov_first=moov_first,
        large_mdat=large_mdat,
    )
    assert size == path.stat().st_size == 3000 + overhead_bytes(mvhd_version=version, large_mdat=large_mdat)
    assert read_creation_time(path) == WHEN
    data = path.read_bytes()
    assert data[4:8] == b"ftyp"
    mvhd = data.index(b"mvhd")
    assert data[mvhd + 4] == version


def test_version_1_holds_times_past_2040(tmp_path: Path) -> None:
    late = datetime(2045, 3, 1, 12, 0, tzinfo=UTC)  # beyond the 32-bit range of the 1904 epoch
    write_mp4(tmp_path / "late.mp4", created_at=late, payload_size=10, duration_s=1)
    assert read_creation_time(tmp_path / "late.mp4") == late
    with pytest.raises(ValueError, match="cannot hold"):
        write_mp4(tmp_path / "x.mp4", created_at=late, payload_size=10, duration_s=1, mvhd_version=0)


def test_writer_refuses_naive_times(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        write_mp4(tmp_path / "x.mp4", created_at=WHEN.replace(tzinfo=None), payload_size=1, duration_s=1)


def test_payload_differs_by_seed_and_is_deterministic(tmp_path: Path) -> None:
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        write_mp4(tmp_path / name, created_at=WHEN, payload_size=5000, duration_s=1, seed=seed)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    assert (tmp_path / "a").read_bytes() != (tmp_path / "c").read_bytes()


def test_reader_touches_only_box_headers_of_a_large_file(tmp_path: Path) -> None:
    path = tmp_path / "big.mp4"
    write_mp4(path, created_at=WHEN, payload_size=16 * 2**20, duration_s=600)
    with CountingFile(path, "rb") as handle:
        assert creation_time_from_handle(handle) == WHEN
        assert handle.bytes_read < 4096


@pytest.mark.parametrize("version", [0, 1])
def test_duration_is_read_with_the_creation_time(tmp_path: Path, version: int) -> None:
    path = tmp_path / "clip.mp4"
    write_mp4(path, created_at=WHEN, payload_size=4096, duration_s=754.25, mvhd_version=version)
    with path.open("rb") as handle:
        header = movie_header_from_handle(handle)
    assert header == MovieHeader(created_at=WHEN, duration_s=754.25)


def test_reader_seeks_past_a_sparse_64_bit_mdat(tmp_path: Path) -> None:
    """A 6 GiB mdat (largesize) followed by moov: found without reading the gigabytes."""
    path = tmp_path / "sparse.mp4"
    payload = 6 * 2**30
    with path.open("wb") as out:
        out.write(struct.pack(">I4sQ", 1, b"mdat", 16 + payload))
        out.seek(16 + payload)
        out.write(_moov(_mvhd_box(0, mvhd_seconds(WHEN))))
    with CountingFile(path, "rb") as handle:
        assert creation_time_from_handle(handle) == WHEN
        assert handle.bytes_read < 4096


def test_every_truncation_gives_none_or_the_time(tmp_path: Path) -> None:
    path = tmp_path / "full.mp4"
    write_mp4(path, created_at=WHEN, payload_size=200, duration_s=1, moov_first=True)
    data = path.read_bytes()
    results = set()
    for length in range(len(data) + 1):
        result = creation_time_from_handle(io.BytesIO(data[:length]))
        assert result in (None, WHEN)
        results.add(result)
    assert results == {None, WHEN}
    # The time is readable as soon as the creation field is complete, not before.
    moov_end_of_time = data.index(b"mvhd") + 4 + 4 + 4
    assert creation_time_from_handle(io.BytesIO(data[: moov_end_of_time - 1])) is None


def _box(box_type: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), box_type) + payload


def _mvhd_box(version: int, seconds: int) -> bytes:
    if version == 0:
        body = bytes([0, 0, 0, 0]) + struct.pack(">IIII", seconds, seconds, 1000, 1000)
    else:
        body = bytes([version, 0, 0, 0]) + struct.pack(">QQIQ", seconds, seconds, 1000, 1000)
    return _box(b"mvhd", body + bytes(80))


def _moov(*children: bytes) -> bytes:
    return _box(b"moov", b"".join(children))


FTYP = _box(b"ftyp", b"isom\x00\x00\x02\x00isom")


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("size below header", FTYP + b"\x00\x00\x00\x04moov" + _mvhd_box(0, 100)),
        ("largesize below header", FTYP + struct.pack(">I4sQ", 1, b"free", 3) + _moov(_mvhd_box(0, 10**9))),
        ("largesize cut", FTYP + struct.pack(">I4s", 1, b"free") + b"\x00\x00"),
        ("moov claims 4 GiB", FTYP + b"\xff\xff\xff\xffmoov" + b"\x00\x00\x00\x0cmvhd\x00\x00\x00\x00"),
        ("mvhd version 2", FTYP + _moov(_mvhd_box(2, 10**9))),
        ("creation time unset", FTYP + _moov(_mvhd_box(0, 0))),
        ("no moov", FTYP + _box(b"mdat", bytes(100))),
        ("mvhd outside moov", FTYP + _mvhd_box(0, 10**9)),
        ("not an mp4", b"\xff\xd8\xff\xe0" + bytes(500)),
        ("empty", b""),
        ("seconds overflow datetime", FTYP + _moov(_mvhd_box(1, 2**64 - 1))),
    ],
)
def test_hostile_boxes_give_none(name: str, data: bytes) -> None:
    assert creation_time_from_handle(io.BytesIO(data)) is None, name


def test_size_zero_box_runs_to_end_of_file() -> None:
    data = FTYP + struct.pack(">I4s", 0, b"moov") + _box(b"free", b"x") + _mvhd_box(1, mvhd_seconds(WHEN))
    assert creation_time_from_handle(io.BytesIO(data)) == WHEN


def test_a_flood_of_tiny_boxes_stops_after_the_box_limit() -> None:
    """moov after more than MAX_BOXES empty boxes: given up on, in bounded work."""
    data = FTYP + _box(b"free", b"") * (MAX_BOXES + 5) + _moov(_mvhd_box(0, mvhd_seconds(WHEN)))
    handle = io.BytesIO(data)
    assert creation_time_from_handle(handle) is None
    within_limit = FTYP + _box(b"free", b"") * (MAX_BOXES - 5) + _moov(_mvhd_box(0, mvhd_seconds(WHEN)))
    assert creation_time_from_handle(io.BytesIO(within_limit)) == WHEN


def test_read_creation_time_does_not_follow_a_symlink(tmp_path: Path) -> None:
    write_mp4(tmp_path / "real.mp4", created_at=WHEN, payload_size=10, duration_s=1)
    (tmp_path / "link.mp4").symlink_to(tmp_path / "real.mp4")
    with pytest.raises(OSError, match="link"):
        read_creation_time(tmp_path / "link.mp4")
