"""Progress: bytes across files, a rate over a sliding window, and an ETA from it."""

from __future__ import annotations

import pytest

from ingestd.progress import DockProgress, SlowCopyWatch


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


def test_a_copy_is_slow_only_after_a_whole_window_below_the_floor() -> None:
    watch = SlowCopyWatch(floor_bps=100.0, window_s=10.0)
    assert watch.observe(0.0, 0) is None
    assert watch.observe(5.0, 600) is None  # no whole window yet
    assert watch.observe(10.0, 1500) is None  # 150 B/s over the window: fast enough
    assert watch.observe(15.0, 1500) == pytest.approx(90.0)  # the last 10 s: 900 B, below the floor


def test_a_pause_in_copying_restarts_the_window() -> None:
    watch = SlowCopyWatch(floor_bps=100.0, window_s=10.0)
    watch.observe(0.0, 0)
    watch.restart()  # e.g. the session went on to another stage, then copies again
    assert watch.observe(20.0, 0) is None
    assert watch.observe(29.0, 0) is None
    assert watch.observe(30.0, 0) == 0.0  # stalled for a whole window since it resumed


def test_a_floor_of_zero_never_calls_a_copy_slow() -> None:
    watch = SlowCopyWatch(floor_bps=0.0, window_s=1.0)
    assert [watch.observe(float(t), 0) for t in range(5)] == [None] * 5


def test_a_finished_copy_keeps_its_average_rate_and_its_label() -> None:
    clock = iter([10.0, 14.0])  # the copy starts at 10 s and ends at 14 s
    progress = DockProgress("Bay 3", clock=lambda: next(clock))
    progress.plan(files_total=1, bytes_total=400)
    progress.set_state("ingesting")
    progress.start_file("A.MP4")
    progress.finish_file(400)
    progress.set_state("done")
    for later in (15.0, 30.0, 120.0):  # waiting to be undocked: the rate does not decay
        snap = progress.snapshot(now=later)
        assert snap.rate_bps == pytest.approx(100.0)
        assert snap.eta_s is None
        assert (snap.label, snap.state, snap.bytes_done) == ("Bay 3", "done", 400)
