"""Refusals on the control socket, aggregated for the audit trail.

Guarantees: the first refusal of a kind (one uid, one action) in an interval may be audited at once;
every further one in that interval is counted, and one event carrying the count is written when the
interval ends (or the server stops), so a caller hammering the socket adds at most about one audit event
per kind per interval and no refusal goes uncounted. A kind still repeating when its interval ends stays
counted-only for the next interval; a quiet kind is forgotten. The kinds are bounded: uids that may
open the socket, times the registered commands plus two (`ctl.unknown`, `ctl.connect`).

Bookkeeping only: the caller passes the monotonic time and writes the events.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from ingestd.control.auth import Caller


@dataclass
class Repeated:
    """Refusals of one kind that were counted, not yet audited."""

    caller: Caller  # the latest one's (the same uid throughout; its pid may differ)
    action: str
    error: str  # the latest one's
    count: int
    first_at: datetime
    last_at: datetime


@dataclass
class _Window:
    ends: float  # monotonic
    counted: Repeated | None = None


class DenialAggregator:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._windows: dict[tuple[int, str], _Window] = {}

    def admit(self, caller: Caller, action: str, error: str, *, mono: float, at: datetime) -> bool:
        """True: audit this refusal now, it opens an interval. False: it was counted for the interval's
        summary (see `due`)."""
        with self._lock:
            window = self._windows.get((caller.uid, action))
            if window is None or (window.ends <= mono and window.counted is None):
                self._windows[(caller.uid, action)] = _Window(ends=mono + self.interval_s)
                return True
            self._count(window, caller, action, error, at)
            return False

    def count(self, caller: Caller, action: str, error: str, *, mono: float, at: datetime) -> None:
        """Count a refusal whose event may wait for the end of its interval (the accept loop's own)."""
        with self._lock:
            window = self._windows.setdefault((caller.uid, action), _Window(ends=mono + self.interval_s))
            self._count(window, caller, action, error, at)

    @staticmethod
    def _count(window: _Window, caller: Caller, action: str, error: str, at: datetime) -> None:
        if window.counted is None:
            window.counted = Repeated(caller, action, error, 1, at, at)
        else:
            window.counted.count += 1
            window.counted.caller, window.counted.error, window.counted.last_at = caller, error, at

    def due(self, mono: float, *, everything: bool = False) -> list[Repeated]:
        """The counts of every interval that has ended (`everything`: of all, at stop), each once."""
        found: list[Repeated] = []
        with self._lock:
            for key, window in list(self._windows.items()):
                if window.ends > mono and not everything:
                    continue
                if window.counted is None:
                    del self._windows[key]
                    continue
                found.append(window.counted)
                self._windows[key] = _Window(ends=mono + self.interval_s)
            if everything:
                self._windows.clear()
        return found
