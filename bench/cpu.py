"""CPU per GiB: what an ingest with read-back costs beyond the hashing it cannot avoid, and what several
cameras at once reach where the CPU, not the disk, is the limit.

1. CPU per GiB (user+sys seconds of the process, all threads; never wall time, the machine is shared):
   - floor: one SHA-256 pass and two BLAKE3 passes over the card's files, by a plain loop in this
     Python, in this run;
   - ingest: `ingestd import` (read-back on) of the card, minus the import of an empty card (start-up),
     each the median of three runs;
   - dd: `dd bs=4M conv=fsync` of the same files;
   target: ingest at most 1.5x the floor.
2. N cameras docked together through the real daemon against single-stream dd to the same store disk
   (target >= 0.8x), each run with the resource that limits it: CPU (cores busy) or the disk (busy time
   of the store's block device). As root the cards are on a tmpfs: a camera's USB link is not the
   store's disk. Each camera has half the files of half the size. As root it runs twice: with the store
   on the work directory's disk, and on a RAM disk (ext4 on a loop device over a tmpfs file), a disk
   so fast that the CPU is the limit, as the target's case has it.

    .venv/bin/python -m bench.cpu [--files 8] [--size-mib 256] [--cameras 8] [--dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import blake3

from bench.common import (
    MiB,
    Usage,
    cpu_seconds,
    dd_usage,
    drop_caches,
    measure,
    run_measured,
)
from bench.ingest import (
    REPO,
    dock_and_wait,
    ingestd,
    make_card,
    reset,
    start_daemon,
    stop,
    write_config,
)
from ingestd.demo import remove_sealed_tree
from tests.support.loopdev import attached, mounted

GiB = 1024 * MiB
FLOOR_RATIO_TARGET = 1.5
CAMERAS_TARGET = 0.8
CHUNK = 4 * MiB
RUNS = 3


def hashing_floor(paths: list[Path]) -> float:
    """CPU seconds of one SHA-256 and two BLAKE3 passes over `paths`; reading the files is not counted."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    spent = 0.0
    for path in paths:
        sha256, first, second = hashlib.sha256(), blake3.blake3(), blake3.blake3()
        with path.open("rb", buffering=0) as handle:
            while count := handle.readinto(buffer):
                chunk = view[:count]
                started = cpu_seconds()
                sha256.update(chunk)
                first.update(chunk)
                second.update(chunk)
                spent += cpu_seconds() - started
    return spent


def import_cpu(work: Path, card: Path, serial: str) -> float:
    """CPU seconds of `ingestd import` of `card` into a fresh station, from a cold cache."""
    reset(work)
    config = write_config(work, udev=False)
    drop_caches()
    measured = run_measured(
        ingestd("import", str(card), "--device-id", serial, "--json", "--config", str(config)), cwd=REPO
    )
    summary = json.loads(measured.output.splitlines()[-1])
    assert summary["files"] == len(list(card.glob("DCIM/*"))), summary
    return measured.cpu_seconds


@contextlib.contextmanager
def ram_disk(work: Path, size: int) -> Iterator[Path]:
    """A fast disk for the store, as root: ext4 on a loop device over a file in a tmpfs, so the store's
    writes, fsyncs and O_DIRECT reads are real ext4 I/O that no disk slows, and the CPU is the limit.
    The loop device does direct I/O to its file: through the page cache it reached a fifth of the speed.
    Everything is undone by its own name: the mount point, the loop device, the tmpfs."""
    options = f"size={size + 64 * MiB},mode=0700"
    with mounted("bench-ram-disk", work / "ram", options, fstype="tmpfs") as backing:
        image = backing / "store.img"
        with image.open("wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, size)  # tmpfs pages made now, not on the store's writes
        with attached(image, direct_io=True) as device:
            subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", device], check=True)
            with mounted(device, work / "fast-store") as mount_point:
                yield mount_point


@contextlib.contextmanager
def fast_cards(work: Path, size: int) -> Iterator[Path]:
    """Where the cameras' cards live: a tmpfs of `size` bytes when root (each camera's USB link is its own
    path, so the cards must not share the store's disk), else a directory on the store's disk."""
    fast = work / "fast"
    if os.geteuid() != 0:
        fast.mkdir()
        yield fast
        return
    with mounted("bench-cards", fast, f"size={size + 64 * MiB},mode=0700", fstype="tmpfs"):
        yield fast


def cameras_together(fast: Path, work: Path, cameras: int, files: int, size: int) -> Usage:
    """`cameras` cards docked at the same moment through the daemon, from the dock to the last session's
    end; CPU is the daemon's over that span."""
    cards = [fast / "cards" / f"ZFY2{n:03d}" for n in range(cameras)]
    for card in cards:
        make_card(card, card.name, files, size)
    docks = fast / "docks"
    daemon = start_daemon(work, udev=False, docks=docks)
    try:
        usage = measure(work, lambda: dock_and_wait(daemon, work, cards, docks))
    finally:
        stop(daemon)
    for card in cards:  # undocked, for the next run
        (docks / card.name).rename(card)
    return usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cpu-bench-", dir=args.dir))
    size = args.size_mib * MiB
    try:
        cold = "caches dropped before runs" if drop_caches() else "NOT root: warm caches"
        print(f"CPU benchmark in {work} at {datetime.now(UTC):%Y-%m-%d %H:%M}Z; {cold}")
        card = work / "cards" / "ZFY0001"
        sources = make_card(card, "ZFY0001", args.files, size)
        empty = work / "cards" / "ZFY0000"
        make_card(empty, "ZFY0000", 0, 0)
        gib = args.files * size / GiB

        floor = hashing_floor(sources) / gib
        # Medians: on a virtual machine one import's CPU seconds swing by a third from run to run.
        start_up = statistics.median(import_cpu(work, empty, "ZFY0000") for _ in range(RUNS))
        ingest = (statistics.median(import_cpu(work, card, "ZFY0001") for _ in range(RUNS)) - start_up) / gib
        dd = dd_usage(work, sources)
        dd_cpu = dd.cpu / gib
        ratio = ingest / floor
        verdict = "ok" if ratio <= FLOOR_RATIO_TARGET else "ABOVE TARGET"
        print(f"{args.files} x {args.size_mib} MiB; user+sys CPU seconds per GiB")
        print(f"{'hashing floor (1 SHA-256 + 2 BLAKE3)':<40}{floor:>8.2f}")
        print(f"{'dd bs=4M conv=fsync':<40}{dd_cpu:>8.2f}")
        print(
            f"{'ingest with read-back, start-up off':<40}{ingest:>8.2f}  "
            f"(start-up {start_up:.2f} s; medians of {RUNS} imports)"
        )
        print(f"{'ingest / floor':<40}{ratio:>8.2f}  target <= {FLOOR_RATIO_TARGET}  {verdict}")

        files, half = max(1, args.files // 2), size // 2
        total = args.cameras * files * half
        with contextlib.ExitStack() as stack:
            fast = stack.enter_context(fast_cards(work, total + files * half))
            single = make_card(fast / "cards" / "ZFY0009", "ZFY0009", files, half)
            root = os.geteuid() == 0
            stores = {"cards on tmpfs, store on disk" if root else "cards and store on one disk": work}
            if root:  # where the CPU, not a disk, is the limit
                ram = stack.enter_context(ram_disk(work, total + 1024 * MiB))
                stores["cards on tmpfs, store on a RAM disk (ext4, loop device over tmpfs)"] = ram
            for where, store_work in stores.items():
                dd_one = dd_usage(store_work, single)
                dd_rate = files * half / MiB / dd_one.seconds
                many = cameras_together(fast, store_work, args.cameras, files, half)
                many_rate = total / MiB / many.seconds
                ratio = many_rate / dd_rate
                verdict = "ok" if ratio >= CAMERAS_TARGET else "BELOW TARGET"
                print(f"{args.cameras} cameras x {files} x {half // MiB} MiB, {where}")
                print(f"{'run':<34}{'MiB/s':>8}{'ratio':>8}  limited by")
                print(f"{'dd, one stream':<34}{dd_rate:>8.0f}{'':>8}  {dd_one.limit()}")
                print(
                    f"{f'{args.cameras} cameras together':<34}{many_rate:>8.0f}{ratio:>8.2f}  {many.limit()}"
                    f"; target >= {CAMERAS_TARGET}  {verdict}"
                )
    finally:
        remove_sealed_tree(work)


if __name__ == "__main__":
    main()
