"""The volume scanner on a hostile directory tree: nothing outside is read, every odd entry is reported."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from drivers.mp4 import write_mp4
from drivers.scan import (
    DEFAULT_FILENAME_PATTERNS,
    CardFile,
    ScanResult,
    compile_time_patterns,
    decode_name,
    display_name,
    scan_volume,
    time_from_name,
)
from drivers.simulator import volume as sim

START = datetime(2026, 11, 22, 0, 30, 15, tzinfo=UTC)  # 08:30:15 in Asia/Shanghai
PASSWD = Path(sim.OUTSIDE_FILE)


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, list[Path], ScanResult]:
    root = tmp_path / "card"
    made = sim.build_volume(
        root,
        device_serial="0000001",
        officer_name="张三",
        count=4,
        size_bytes=8192,
        start=START,
        seed=11,
        hostile=True,
    )
    return root, made, scan_volume(root)


def by_name(result: ScanResult) -> dict[str, CardFile]:
    return {recording.name: recording for recording in result.recordings}


def test_every_recording_is_listed_with_an_exact_raw_path(
    hostile: tuple[Path, list[Path], ScanResult],
) -> None:
    _root, made, result = hostile
    assert sorted(recording.raw_path for recording in result.recordings) == sorted(
        os.fsencode(path) for path in made
    )
    for recording in result.recordings:
        fd = recording.open_fd()
        try:
            assert os.fstat(fd).st_size == recording.size == 8192
        finally:
            os.close(fd)


def test_nothing_outside_the_volume_is_listed_or_read(hostile: tuple[Path, list[Path], ScanResult]) -> None:
    root, _made, result = hostile
    outside_content = PASSWD.read_bytes()[:64]
    for recording in result.recordings:
        real = os.path.realpath(recording.raw_path)
        assert real.startswith(os.fsencode(root.resolve()) + b"/")
        assert os.fsencode(sim.OUTSIDE_DIR) + b"/" not in real
        fd = recording.open_fd()
        try:
            assert os.read(fd, 64) != outside_content
        finally:
            os.close(fd)
    rejected = dict(result.rejected)
    assert rejected["DCIM/100MEDIA/passwd.MP4"] == "symbolic link to /etc/passwd, not followed"
    assert rejected["DCIM/etc"] == "symbolic link to /etc, not followed"
    assert rejected["DCIM/100MEDIA/up.MP4"].startswith("symbolic link to ../")
    assert not any(name.startswith("DCIM/etc/") for name in rejected)  # the outside dir was not walked
    assert all(outside_content.decode(errors="replace") not in reason for reason in rejected.values())


def test_special_files_are_rejected_with_their_kind(hostile: tuple[Path, list[Path], ScanResult]) -> None:
    rejected = dict(hostile[2].rejected)
    assert rejected["DCIM/100MEDIA/fifo.MP4"] == "not a regular file (fifo)"
    assert rejected["DCIM/100MEDIA/socket.MP4"] == "not a regular file (socket)"
    if os.geteuid() == 0:
        assert rejected["DCIM/100MEDIA/null.MP4"] == "not a regular file (character device)"


def test_odd_names_are_listed_with_safe_display_names(hostile: tuple[Path, list[Path], ScanResult]) -> None:
    _root, _made, result = hostile
    names = by_name(result)
    stamp = "20261122_"
    assert "..evil.MP4" in names
    assert "DCIM/.../.. /..evil.MP4" in names
    assert any(name.startswith(f"DCIM/100MEDIA/执法仪_{stamp}") for name in names)  # GBK decoded
    assert any(name.startswith("DCIM/录像/ZFY0000001_") for name in names)  # GBK directory name
    assert any(name.startswith("DCIM/100MEDIA/\\xff\\xfe_") for name in names)  # undecodable bytes
    assert any(name.endswith("_line1\\nline2.MP4") for name in names)
    assert any(name.startswith("DCIM/100MEDIA/\\u001b[31mred") for name in names)
    assert "DCIM/100MEDIA/evil\\u202e4PM.MP4" in names
    assert any(len(name.encode()) == 255 for name in names)
    for name in names:
        assert name.isprintable(), name
        name.encode("utf-8")  # no lone surrogates: safe for logs and the catalog
    ignored = dict(result.ignored)
    assert ignored["..evil"] == "not a recording extension"
    assert "ZFYINFO.TXT" in ignored


def test_recorded_at_sources_in_order(hostile: tuple[Path, list[Path], ScanResult]) -> None:
    names = by_name(hostile[2])
    first = names["DCIM/100MEDIA/ZFY0000001_20261122_083015_0001.MP4"]
    assert (first.recorded_at, first.recorded_at_source) == (START, "mvhd")
    lying = next(recording for name, recording in names.items() if name.endswith("_9999.MP4"))
    assert lying.recorded_at_source == "filename"
    local = datetime.strptime(lying.name.split("_", 1)[1][:15] + "+0800", "%Y%m%d_%H%M%S%z")
    assert lying.recorded_at == local
    assert all(recording.recorded_at.tzinfo is UTC for recording in names.values())
    assert all(recording.mtime.tzinfo is UTC for recording in names.values())


def test_name_then_mtime_fallback_and_time_zone(tmp_path: Path) -> None:
    (tmp_path / "20261122083015.mp4").write_bytes(b"not an mp4 at all")
    (tmp_path / "clip.avi").write_bytes(b"RIFF")
    mtime = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    os.utime(tmp_path / "clip.avi", (mtime.timestamp(), mtime.timestamp()))
    result = scan_volume(tmp_path)
    named = by_name(result)
    assert named["20261122083015.mp4"].recorded_at == datetime(2026, 11, 22, 0, 30, 15, tzinfo=UTC)
    assert named["20261122083015.mp4"].recorded_at_source == "filename"
    assert (named["clip.avi"].recorded_at, named["clip.avi"].recorded_at_source) == (mtime, "mtime")
    utc_named = by_name(scan_volume(tmp_path, filename_tz="UTC"))
    assert utc_named["20261122083015.mp4"].recorded_at == datetime(2026, 11, 22, 8, 30, 15, tzinfo=UTC)


def test_custom_patterns_replace_the_default(tmp_path: Path) -> None:
    (tmp_path / "REC-22.11.2026-0830.MOV").write_bytes(b"")
    (tmp_path / "ZFY0000001_20261122_083015_0001.MP4").write_bytes(b"")
    pattern = r"REC-(?P<day>\d\d)\.(?P<month>\d\d)\.(?P<year>\d{4})-(?P<hour>\d\d)(?P<minute>\d\d)"
    named = by_name(
        scan_volume(tmp_path, filename_patterns=[pattern], filename_tz=timezone(timedelta(hours=8)))
    )
    assert named["REC-22.11.2026-0830.MOV"].recorded_at == datetime(2026, 11, 22, 0, 30, tzinfo=UTC)
    assert named["ZFY0000001_20261122_083015_0001.MP4"].recorded_at_source == "mtime"


def test_bad_patterns_are_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a valid regex"):
        scan_volume(tmp_path, filename_patterns=["(unclosed"])
    with pytest.raises(ValueError, match="lacks the named groups hour, minute"):
        scan_volume(tmp_path, filename_patterns=[r"(?P<year>\d{4})(?P<month>\d\d)(?P<day>\d\d)"])


def test_impossible_dates_in_names_fall_through(tmp_path: Path) -> None:
    (tmp_path / "20261399083015.mp4").write_bytes(b"")
    assert by_name(scan_volume(tmp_path))["20261399083015.mp4"].recorded_at_source == "mtime"


def test_extensions_are_case_insensitive_and_configurable(tmp_path: Path) -> None:
    write_mp4(tmp_path / "A.MP4", created_at=START, payload_size=1, duration_s=1)
    (tmp_path / "b.wav").write_bytes(b"")
    result = scan_volume(tmp_path, extensions=[".mp4"])
    assert [recording.name for recording in result.recordings] == ["A.MP4"]
    assert dict(result.ignored) == {"b.wav": "not a recording extension"}


def test_depth_and_entry_limits_are_reported_not_raised(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d"] * 6)
    deep.mkdir(parents=True)
    (deep / "x.mp4").write_bytes(b"")
    result = scan_volume(tmp_path, max_depth=3)
    assert result.recordings == ()
    assert dict(result.rejected) == {"d/d/d/d": "directory deeper than 3 levels, not scanned"}
    for number in range(10):
        (tmp_path / f"{number}.mp4").write_bytes(b"")
    limited = scan_volume(tmp_path, max_entries=5)
    assert len(limited.recordings) == 5
    assert any(reason.startswith("scan stopped: more than 5") for _path, reason in limited.rejected)


def test_decode_and_display_helpers() -> None:
    assert decode_name("录像".encode()) == "录像"
    assert decode_name("录像".encode("gbk")) == "录像"
    assert decode_name(b"\xff\xfe") == "\udcff\udcfe"
    assert display_name("\udcff\udcfe") == "\\xff\\xfe"
    assert display_name("a\nb\r\tc\\d\x1b\u202e\u2028") == "a\\nb\\r\\tc\\\\d\\u001b\\u202e\\u2028"


def test_time_from_name_skips_invalid_matches() -> None:
    patterns = compile_time_patterns(DEFAULT_FILENAME_PATTERNS)
    # The first candidate (month 13) is impossible; the later valid one is used.
    found = time_from_name("20261322_083015/ZFY_20261122_083015.MP4", patterns, UTC)
    assert found == datetime(2026, 11, 22, 8, 30, 15, tzinfo=UTC)
    assert time_from_name("no digits here", patterns, UTC) is None
