"""Per-dock transfer progress: updated from the copy loop, read about once a second by the flusher.

The copy loop only adds integers under a lock; rate, ETA and persistence happen on the reader's side,
so reporting never slows the copy. Once the copy is over the rate stays at the copy's average, so a
finished dock does not show a rate that decays while it waits to be undocked.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

RATE_WINDOW_S = 5.0
COPYING = "ingesting"


@dataclass(frozen=True)
class ProgressSnapshot:
    label: str  # the dock's `[[dock]]` label, else its short port name ("" for `ingestd import`)
    state: str
    current_file: str | None
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    rate_bps: float | None
    eta_s: float | None


class DockProgress:
    def __init__(self, label: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self._clock = clock
        self._lock = threading.Lock()
        self._state = "identifying"
        self._current_file: str | None = None
        self._bytes_done = 0
        self._bytes_total = 0
        self._files_done = 0
        self._files_total = 0
        self._file_base = 0  # bytes_done at the start of the current file
        self._samples: deque[tuple[float, int]] = deque()
        self._copy_started: float | None = None
        self._copy_rate: float | None = None  # set once the copy is over: its average

    def set_state(self, state: str) -> None:
        with self._lock:
            now = self._clock()
            if state == COPYING and self._state != COPYING:
                self._copy_started, self._copy_rate = now, None
            elif state != COPYING and self._state == COPYING and self._copy_started is not None:
                elapsed = now - self._copy_started
                self._copy_rate = self._bytes_done / elapsed if elapsed > 0 else None
            self._state = state

    def plan(self, files_total: int, bytes_total: int) -> None:
        with self._lock:
            self._files_total = files_total
            self._bytes_total = bytes_total

    def start_file(self, name: str) -> None:
        with self._lock:
            self._current_file = name
            self._file_base = self._bytes_done

    def file_progress(self, done_in_file: int) -> None:
        """The store's progress callback: bytes of the current file written so far."""
        with self._lock:
            self._bytes_done = self._file_base + done_in_file

    def finish_file(self, size: int) -> None:
        with self._lock:
            self._bytes_done = self._file_base + size
            self._files_done += 1
            self._current_file = None

    def snapshot(self, now: float | None = None) -> ProgressSnapshot:
        now = self._clock() if now is None else now
        with self._lock:
            done, total = self._bytes_done, self._bytes_total
            if self._state != COPYING and self._copy_started is not None:
                rate, eta = self._copy_rate, None  # the copy is over: its average, no ETA
            else:
                self._samples.append((now, done))
                while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_S:
                    self._samples.popleft()
                first_t, first_done = self._samples[0]
                rate = (done - first_done) / (now - first_t) if now > first_t else None
                eta = (total - done) / rate if rate and rate > 0 and total >= done else None
            return ProgressSnapshot(
                self.label,
                self._state,
                self._current_file,
                done,
                total,
                self._files_done,
                self._files_total,
                rate,
                eta,
            )

    def copying(self) -> tuple[bool, int]:
        """Whether the session is copying recordings now, and the bytes copied so far."""
        with self._lock:
            return self._state == COPYING, self._bytes_done


class SlowCopyWatch:
    """Says when a copy has averaged below `floor_bps` over the last `window_s` seconds.

    Fed monotonic times and byte counts by one caller; a floor of 0 never calls a copy slow. A gap in
    copying (another stage of the session) restarts the window, so only copying time is judged.
    """

    def __init__(self, floor_bps: float, window_s: float) -> None:
        self.floor_bps = floor_bps
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def restart(self) -> None:
        self._samples.clear()

    def observe(self, now: float, bytes_done: int) -> float | None:
        """The average rate over the window when it is below the floor, else None."""
        if self.floor_bps <= 0:
            return None
        self._samples.append((now, bytes_done))
        while len(self._samples) > 1 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()  # the next sample still spans a whole window
        first_t, first_done = self._samples[0]
        if now - first_t < self.window_s:
            return None
        rate = (bytes_done - first_done) / (now - first_t)
        return rate if rate < self.floor_bps else None
