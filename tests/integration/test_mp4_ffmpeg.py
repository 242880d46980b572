"""The mvhd reader against files made by a real muxer, and the writer's output read by ffprobe."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drivers.mp4 import movie_header_from_handle, read_creation_time, write_mp4


def require_ffmpeg() -> None:
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (CI installs the Debian ffmpeg package)")


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
@pytest.mark.parametrize("faststart", [False, True])
def test_reads_ffmpeg_creation_time(tmp_path: Path, suffix: str, faststart: bool) -> None:
    require_ffmpeg()
    out = tmp_path / f"out{suffix}"
    args = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=duration=1:size=64x64"]
    args += ["-metadata", "creation_time=2026-11-22T00:30:15Z", "-y"]
    if faststart:
        args += ["-movflags", "+faststart"]  # moov before mdat, as streaming encoders write it
    subprocess.run([*args, str(out)], check=True, capture_output=True, timeout=60)
    assert read_creation_time(out) == datetime(2026, 11, 22, 0, 30, 15, tzinfo=UTC)
    with out.open("rb") as handle:
        header = movie_header_from_handle(handle)
    assert header is not None
    assert header.duration_s == pytest.approx(1.0, abs=0.05)


def test_ffmpeg_file_without_creation_time_gives_none(tmp_path: Path) -> None:
    require_ffmpeg()
    out = tmp_path / "plain.mp4"
    args = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=duration=1:size=64x64", "-y", str(out)]
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    assert read_creation_time(out) is None


@pytest.mark.parametrize("version", [0, 1])
def test_ffprobe_accepts_the_writers_files(tmp_path: Path, version: int) -> None:
    require_ffmpeg()
    path = tmp_path / "sim.mp4"
    when = datetime(2026, 11, 22, 0, 30, 15, tzinfo=UTC)
    write_mp4(path, created_at=when, payload_size=4096, duration_s=12.5, mvhd_version=version)
    entries = "format=duration:format_tags=creation_time"
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", entries, "-of", "json", str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = json.loads(probe.stdout)["format"]
    assert found["tags"]["creation_time"] == "2026-11-22T00:30:15.000000Z"
    assert float(found["duration"]) == 12.5
