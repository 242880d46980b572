"""Progress: bytes across files, a rate over a sliding window, and an ETA from it."""

from __future__ import annotations

import pytest

from ingestd.progress import DockProgress


def test_rate_and_eta_follow_the_bytes_copied() -> None:
    progress = DockProgress()
    progress.plan(files_total=2, bytes_total=300)
    progress.start_file("A.MP4")
    assert progress.snapshot(now=0.0).rate_bps is None
    progress.file_progress(50)
    snap = progress.snapshot(now=1.0)
    assert snap.bytes_done == 50
    assert snap.rate_bps == pytest.approx(50.0)
    assert snap.eta_s == pytest.approx(5.0)
    assert snap.current_file == "A.MP4"
    progress.finish_file(100)
    progress.start_file("B.MP4")
    progress.file_progress(100)
    snap = progress.snapshot(now=3.0)
    assert snap.bytes_done == 200  # the second file counts from where the first ended
    assert snap.files_done == 1
    assert snap.rate_bps == pytest.approx(200 / 3)


def test_rate_window_forgets_old_samples() -> None:
    progress = DockProgress()
    progress.plan(files_total=1, bytes_total=10_000)
    progress.start_file("A.MP4")
    progress.snapshot(now=0.0)
    progress.file_progress(1000)
    progress.snapshot(now=1.0)
    for second in range(2, 12):  # stalled: no more bytes
        progress.snapshot(now=float(second))
    snap = progress.snapshot(now=12.0)
    assert snap.rate_bps == pytest.approx(0.0)
    assert snap.eta_s is None
