"""What every device source guarantees (ingestd/docking/source.py), run against each adapter: udev on real
kernel uevents from attaching and detaching a loop device, and a real watched folder.

Other processes attach loop devices too, so the udev cases only look at the ports of their own."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import queue
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from ingestd.docking.events import Docked, DockEvent, Undocked
from ingestd.docking.folders import DESCRIPTOR, FolderSource, port_for
from ingestd.docking.source import DeviceSource, Ready
from tests.support.loopdev import attach_held, require_root_tools

SETTLE_S = 0.5
WAIT_S = 30.0


@dataclass(frozen=True)
class Arrival:
    port: str
    label: str  # what tells this arrival apart from another on the same port


class Bay(Protocol):
    """Where a test docks things: `arrive` makes something appear, `leave` takes it away."""

    def source(
        self,
        sink: queue.SimpleQueue[tuple[float, DockEvent]],
        *,
        settle_s: float = SETTLE_S,
        ready: Ready | None = None,
    ) -> DeviceSource: ...
    def arrive(self, label: str) -> Arrival: ...
    def leave(self, arrival: Arrival) -> None: ...
    def label_of(self, event: Docked) -> str: ...


class FolderBay:
    """Volumes whose station descriptor names a control tty (a real pty, closed at the end)."""

    def __init__(self, base: Path, held: contextlib.ExitStack) -> None:
        self.watched = base / "docks"
        self.staging = base / "staging"
        self.staging.mkdir(parents=True)
        primary, secondary = pty.openpty()
        held.callback(os.close, primary)
        held.callback(os.close, secondary)
        self.tty = os.ttyname(secondary)

    def source(
        self,
        sink: queue.SimpleQueue[tuple[float, DockEvent]],
        *,
        settle_s: float = SETTLE_S,
        ready: Ready | None = None,
    ) -> DeviceSource:
        return FolderSource(
            [self.watched], lambda e: sink.put((time.monotonic(), e)), settle_s=settle_s, ready=ready
        )

    def arrive(self, label: str) -> Arrival:
        volume = self.staging / label
        volume.mkdir()
        (volume / "REC0001.MP4").write_bytes(b"\0" * 1024)
        (volume / DESCRIPTOR).write_text(json.dumps({"tty": self.tty}), encoding="utf-8")
        self.watched.mkdir(exist_ok=True)
        volume.rename(self.watched / label)  # as a card reader's mount appears: all at once
        return Arrival(port_for(self.watched / label), label)

    def leave(self, arrival: Arrival) -> None:
        (self.watched / arrival.label).rename(self.staging / arrival.label)

    def label_of(self, event: Docked) -> str:
        assert event.device.directory is not None
        return event.device.directory.name


class UdevBay:
    """Loop devices of its own images, each detached by its device node when it leaves or at the end."""

    def __init__(self, base: Path, held: contextlib.ExitStack) -> None:
        require_root_tools()
        self.base = base
        self.held = held
        self.attached: dict[str, str] = {}  # label -> device node

    def source(
        self,
        sink: queue.SimpleQueue[tuple[float, DockEvent]],
        *,
        settle_s: float = SETTLE_S,
        ready: Ready | None = None,
    ) -> DeviceSource:
        from ingestd.docking.udev import UdevSource  # noqa: PLC0415 - pyudev loads on use, as in the daemon

        return UdevSource(
            lambda e: sink.put((time.monotonic(), e)), source="kernel", settle_s=settle_s, ready=ready
        )

    def arrive(self, label: str) -> Arrival:
        image = self.base / f"{label}.img"
        with image.open("wb") as out:
            out.truncate(1024 * 1024)
        device = attach_held(image, self.held)
        self.attached[label] = device
        return Arrival(f"/devices/virtual/block/{Path(device).name}", label)

    def leave(self, arrival: Arrival) -> None:
        device = self.attached.pop(arrival.label)
        subprocess.run(["losetup", "--detach", device], check=True, capture_output=True)

    def label_of(self, event: Docked) -> str:
        return Path(event.device.properties["LOOP_BACKING_FILE"]).stem


@pytest.fixture(params=["udev", "folder"])
def bay(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bay]:
    with contextlib.ExitStack() as held:
        yield UdevBay(tmp_path, held) if request.param == "udev" else FolderBay(tmp_path, held)


@pytest.fixture
def events() -> queue.SimpleQueue[tuple[float, DockEvent]]:
    return queue.SimpleQueue()


@contextlib.contextmanager
def running(source: DeviceSource) -> Iterator[DeviceSource]:
    source.start()
    try:
        yield source
    finally:
        source.stop()
        assert source.join(timeout=10), "the source's thread did not end after stop()"


def until(
    events: queue.SimpleQueue[tuple[float, DockEvent]], kind: type[DockEvent], port: str
) -> list[tuple[float, DockEvent]]:
    """The events (with the time each was emitted) up to the first `kind` on `port`."""
    seen: list[tuple[float, DockEvent]] = []
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            at, event = events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {kind.__name__} on {port} within {WAIT_S}s; saw {seen}") from None
        seen.append((at, event))
        if isinstance(event, kind) and event.port == port:
            return seen


def on(ports: set[str], seen: list[tuple[float, DockEvent]], bay: Bay) -> list[tuple[str, str]]:
    """What happened on `ports`, as (event, label or port)."""
    return [
        (type(event).__name__, bay.label_of(event) if isinstance(event, Docked) else event.port)
        for _at, event in seen
        if event.port in ports
    ]


@pytest.mark.parametrize("ready", [None, "never", "always"])
def test_an_arrival_docks_once_and_undocks_once_when_it_leaves(
    bay: Bay, events: queue.SimpleQueue[tuple[float, DockEvent]], ready: str | None
) -> None:
    """Without a `ready` predicate, or where it does not hold, the dock waits out the settle window;
    where it holds the arrival docks at once (the window is then far longer than `until` waits, so a
    dock at all is an early one)."""
    early = ready == "always"
    predicate = None if ready is None else (lambda device: early)
    with running(bay.source(events, settle_s=10 * WAIT_S if early else SETTLE_S, ready=predicate)):
        arrived_at = time.monotonic()
        camera = bay.arrive("cam1")
        docked = until(events, Docked, camera.port)
        if not early:
            assert docked[-1][0] - arrived_at >= SETTLE_S  # not before the settle window
        bay.leave(camera)
        undocked = until(events, Undocked, camera.port)
    assert on({camera.port}, docked + undocked, bay) == [("Docked", "cam1"), ("Undocked", camera.port)]


def test_what_is_present_before_start_is_docked(
    bay: Bay, events: queue.SimpleQueue[tuple[float, DockEvent]]
) -> None:
    camera = bay.arrive("cam2")
    # What is there at start is all there: it settles, even where its driver could start at once.
    started_at = time.monotonic()
    with running(bay.source(events, ready=lambda device: True)):
        seen = until(events, Docked, camera.port)
        assert seen[-1][0] - started_at >= SETTLE_S
        bay.leave(camera)
        seen += until(events, Undocked, camera.port)
    assert on({camera.port}, seen, bay) == [("Docked", "cam2"), ("Undocked", camera.port)]


def test_an_arrival_that_leaves_before_settling_emits_nothing(
    bay: Bay, events: queue.SimpleQueue[tuple[float, DockEvent]]
) -> None:
    with running(bay.source(events)):
        brief = bay.arrive("brief")
        bay.leave(brief)
        # It left before this one arrived, so it would have settled first: by this one's dock, all of
        # its events are in (the two may share a loop device, hence the labels).
        later = bay.arrive("later")
        seen = until(events, Docked, later.port)
    assert on({brief.port, later.port}, seen, bay) == [("Docked", "later")]


def test_stop_ends_the_source_and_its_thread(
    bay: Bay, events: queue.SimpleQueue[tuple[float, DockEvent]]
) -> None:
    source = bay.source(events)
    source.start()
    source.stop()
    assert source.join(timeout=10)
