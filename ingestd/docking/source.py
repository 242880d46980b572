"""Device sources: what notices cameras arriving and leaving, as Docked/Undocked events for the manager.

Every source guarantees the same things (tests/integration/test_device_source_contract.py):
- `start()` listens first and then picks up what is already present, so nothing arriving in between is
  missed; the source then runs on its own thread until `stop()` sets its stop event, and `join()` waits
  for that thread;
- an arrival is docked once, as one `Docked`, after nothing about it has changed for the settle window
  (`Settle`, the one settle mechanism), or earlier where the source was given a `ready` predicate and
  it holds (the udev source); it is undocked once, as one `Undocked`, when it leaves;
- an arrival that leaves before it settled emits nothing.

Adapters: `ingestd.docking.udev.UdevSource` (kernel uevents over netlink) and
`ingestd.docking.folders.FolderSource` (directories in watched folders).
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable, Hashable
from typing import ClassVar, Generic, TypeVar

from drivers.base import DeviceInfo
from ingestd.docking.events import DockEvent

K = TypeVar("K", bound=Hashable)
# Whether a device has what its driver needs to start (the registry's, passed in by the daemon): such an
# arrival docks without waiting out the settle window.
Ready = Callable[[DeviceInfo], bool]
POLL_S = 0.5  # longest wait for a change, so a stop is noticed within it


class Settle(Generic[K]):
    """Arrivals waiting to settle: each is due once nothing about it changed for `settle_s` seconds.
    Pure: the caller supplies the (monotonic) clock."""

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self._last_change: dict[K, float] = {}

    def touch(self, key: K, now: float) -> None:
        """Something about `key` changed (it arrived, or another part of it did)."""
        self._last_change[key] = now

    def drop(self, key: K) -> bool:
        """Forget `key`; whether it was still waiting."""
        return self._last_change.pop(key, None) is not None

    def due(self, now: float) -> list[K]:
        """The arrivals that have settled by `now`, in arrival order; each is returned once."""
        ready = [key for key, last in self._last_change.items() if now - last >= self.settle_s]
        for key in ready:
            del self._last_change[key]
        return ready

    def next_deadline(self) -> float | None:
        return min(self._last_change.values()) + self.settle_s if self._last_change else None


class DeviceSource(abc.ABC):
    """One thing that notices cameras (see the module docstring for what every source guarantees)."""

    thread_name: ClassVar[str]

    def __init__(self, sink: Callable[[DockEvent], None], *, stop: threading.Event | None) -> None:
        self._sink = sink
        self._stop = stop if stop is not None else threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)

    def start(self) -> None:
        self._listen()
        self._thread.start()

    def stop(self) -> None:
        """Ask the source to end; its thread ends within about `POLL_S`."""
        self._stop.set()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the source's thread to end; whether it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                deadline = self._next_deadline()
                wait = POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic()))
                for event in self._wait_for_change(wait):
                    self._sink(event)
                for event in self._settled(time.monotonic()):
                    self._sink(event)
        finally:
            self._close()

    @abc.abstractmethod
    def _listen(self) -> None:
        """Start listening, then take in what is present already (on the caller's thread)."""

    @abc.abstractmethod
    def _wait_for_change(self, timeout: float) -> list[DockEvent]:
        """Wait up to `timeout` s for changes and take them in; return the events they decide (undocks,
        early docks, late storage)."""

    @abc.abstractmethod
    def _settled(self, now: float) -> list[DockEvent]:
        """The docks of the arrivals that have settled by `now`."""

    @abc.abstractmethod
    def _next_deadline(self) -> float | None:
        """When the next waiting arrival settles (monotonic seconds), or None."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release what `_listen` opened (on the source's thread, as it ends)."""
