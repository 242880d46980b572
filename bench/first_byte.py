"""Dock to first byte, through the real daemon, beside the settle window as its baseline (target < 1.0 s).

1. a mass-storage card on a loop device: from the `losetup` that raises the kernel's uevent to the first
   byte of the first partial copy in the store;
2. a serial camera (the simulator on a pty, its volume on a loop device): from its tty appearing (its
   dock directory, whose station descriptor names the tty, moved into the watched folder) to the first
   byte; this includes authentication, the clock's measurement and correction, SetMSDC and the mount.

Before early docks a dock waited out `detection.settle_seconds` (1.0 s by default) after its last device
appeared, so the settle window alone was the floor of dock-to-first-byte. Needs root (loop devices).

    .venv/bin/python -m bench.first_byte [--size-mib 64] [--runs 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.common import MiB
from bench.ingest import make_card
from ingestd.demo import remove_sealed_tree
from tests.support.loopdev import attached
from tests.system.harness import Daemon, SimulatedCamera

TARGET_S = 1.0
SETTLE_S = 1.0  # the config's default: the baseline
GIVE_UP_S = 60.0


def first_partial_byte(store: Path, started: float) -> float:
    """Seconds from `started` (perf_counter) until a partial copy in `store` holds a byte."""
    partial = store / "partial"
    while not (partial.exists() and any(p.stat().st_size > 0 for p in partial.glob("*.part"))):
        if time.perf_counter() - started > GIVE_UP_S:
            raise RuntimeError(f"no byte copied within {GIVE_UP_S:g} s")
        time.sleep(0.001)
    return time.perf_counter() - started


def one_run(work: Path, dock: Callable[[Daemon], float]) -> float:
    """Start a fresh daemon under `work`, dock once with `dock`, stop; its dock-to-first-byte."""
    daemon = Daemon(base=work / "station", udev=True, settle_seconds=SETTLE_S)
    try:
        daemon.start()
        return dock(daemon)
    finally:
        daemon.close()
        remove_sealed_tree(work / "station")


def loop_card(work: Path, size: int) -> Callable[[Daemon], float]:
    card = work / "card"
    make_card(card, "ZFY0801", 1, size)
    image = work / "ZFY0801-camera.img"  # the harness's mass-storage rule matches *-camera.img

    def dock(daemon: Daemon) -> float:
        # Made afresh for every run: a run whose session ends before the stop deletes the recording.
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-d", str(card), str(image), f"{size // MiB + 64}M"],
            check=True,
            capture_output=True,
        )
        started = time.perf_counter()
        with attached(image):
            figure = first_partial_byte(daemon.store, started)
            daemon.stop()  # SIGTERM: its session unmounts the card before the card's loop device goes
        return figure

    return dock


def serial_camera(work: Path, size: int) -> Callable[[Daemon], float]:
    def dock(daemon: Daemon) -> float:
        camera = SimulatedCamera(
            base=work / "cameras", serial="ZFY0802", files=1, size_bytes=size, image=True
        )
        camera.start()
        try:
            started = time.perf_counter()
            camera.dock(daemon.docks)
            figure = first_partial_byte(daemon.store, started)
            daemon.stop()  # as above: unmounted before the simulator detaches its loop device
            return figure
        finally:
            camera.close()
            remove_sealed_tree(work / "cameras")

    return dock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3, help="docks per measure; the median is printed")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    missing = [tool for tool in ("losetup", "mkfs.ext4") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        print(f"dock-to-first-byte benchmark skipped: needs root and {', '.join(missing) or 'loop devices'}")
        return
    work = Path(tempfile.mkdtemp(prefix="first-byte-bench-", dir=args.dir))
    size = args.size_mib * MiB
    try:
        print(
            f"dock-to-first-byte benchmark in {work} at {datetime.now(UTC):%Y-%m-%d %H:%M}Z, "
            f"median of {args.runs}"
        )
        print(f"{'measure':<40}{'figure (s)':>12}{'baseline':>10}{'ratio':>8}{'target':>8}")
        for label, dock in (
            ("loop-device uevent to first byte", loop_card(work, size)),
            ("serial camera's tty to first byte", serial_camera(work, size)),
        ):
            figure = statistics.median(one_run(work, dock) for _ in range(args.runs))
            verdict = "ok" if figure < TARGET_S else "ABOVE TARGET"
            print(
                f"{label:<40}{figure:>12.3f}{SETTLE_S:>10.1f}{figure / SETTLE_S:>8.2f}{TARGET_S:>8.1f}"
                f"  {verdict}  (baseline: the settle window)"
            )
    finally:
        remove_sealed_tree(work)


if __name__ == "__main__":
    main()
