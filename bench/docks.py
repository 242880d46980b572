"""Many cameras at once through the real daemon, each its own simulated serial dock, beside single-stream
dd to the same store disk from the same run.

Each camera is the simulator on a real pty with its generated volume (as the system tests dock serial
cameras); all are docked at the same moment with `ingest.max_concurrent` equal to their number. As
root the volumes are on a tmpfs: a camera's USB link is not the store's disk. Printed:
- aggregate MiB/s, from the dock to the last session's end, against dd of one camera's bytes in files of
  128 MiB (target >= 0.9);
- each camera's rate while all are copying (the bytes its dock's progress row gained between the first
  and the last sample, 4 a second, that showed the most docks `ingesting` at once) and the farthest of
  those rates from their mean (target: every one within +-25%). The row counts copied bytes only, so a
  camera reading back and committing a file gains nothing meanwhile; with 25 docks that takes seconds.
  Each camera therefore has 8 files of 32 MiB: the window then spans several files of every camera.
  With 2 of 128 MiB it is shorter than one file, and whether a camera's one read-back fell in it
  decided its rate (farthest from the mean 40 and 55 %, against 20 and 9 % for 8 of 32 MiB, in
  alternating runs; 70 and 100 % in two more runs of 2 of 128 MiB, one camera gaining nothing in 2 s);
- the daemon's peak RSS, VmHWM of its /proc status (target <= 300 MiB);
- which resource limited the run: the daemon's CPU, the whole machine's CPU, or the store's disk.

    .venv/bin/python -m bench.docks [--cameras 25] [--files 8] [--size-mib 32] [--dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from bench.common import MiB, dd_usage, measure, process_cpu
from bench.cpu import fast_cards
from bench.ingest import ended_sessions, make_card, start_daemon, stop
from ingestd.demo import remove_sealed_tree
from ingestd.progress import COPYING
from store.catalog import Catalog
from store.models import Dock
from tests.system.harness import SimulatedCamera

AGGREGATE_TARGET = 0.9
SPREAD_TARGET = 0.25
RSS_TARGET_MIB = 300.0
SERIAL_RULE = """
[[camera]]
match = { SUBSYSTEM = "folder", ZFY_TRANSPORT = "serial" }
driver = "serial"
password = "000000"
filesystems = ["vfat", "exfat", "ext4"]
"""


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a running process: its resident set's high-water mark."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


Sample = tuple[float, dict[str, tuple[str, int]]]  # (seconds, port -> (state, bytes done))


def dock_progress(work: Path) -> dict[str, tuple[str, int]]:
    """Each dock's state and bytes copied, as the daemon persists them about once a second."""
    catalog = Catalog.open(f"sqlite:///{work / 'state' / 'catalog.db'}", read_only=True)
    try:
        with catalog.transaction() as db:
            return {
                row.port: (row.state, row.bytes_done)
                for row in db.execute(select(Dock.port, Dock.state, Dock.bytes_done))
            }
    finally:
        catalog.close()


def copy_rates(samples: list[Sample]) -> tuple[int, float, dict[str, float]]:
    """(the most docks copying at once, the seconds they all copied together, each dock's MiB/s over
    those seconds): the issue's spread is "while all are copying", so a dock that starts or ends alone,
    as the first and the last to identify over their serial links do, is not judged on that time."""
    copying_in = [
        (at, {port: done for port, (state, done) in docks.items() if state == COPYING})
        for at, docks in samples
    ]
    most = max((len(copying) for _, copying in copying_in), default=0)
    together = [(at, copying) for at, copying in copying_in if most and len(copying) == most]
    if len(together) < 2:
        return most, 0.0, {}
    (start, first), (end, last) = together[0], together[-1]
    seconds = end - start
    rates = {port: (last[port] - first[port]) / MiB / seconds for port in first if port in last}
    return most, seconds, rates


DD_FILE = 128 * MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--cameras", type=int, default=25)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="docks-bench-", dir=args.dir))
    size = args.size_mib * MiB
    total = args.cameras * args.files * size
    try:
        print(f"{args.cameras} serial docks at once in {work} at {datetime.now(UTC):%Y-%m-%d %H:%M}Z")
        with fast_cards(work, total + args.files * size) as fast:
            # One camera's bytes in files of at least 128 MiB: dd's fsync per file would otherwise make
            # the baseline of small files slower (8 x 32 MiB: 741-762 MiB/s, 2 x 128: 912-1029, alternating).
            dd_files = max(1, args.files * size // DD_FILE)
            single = make_card(fast / "cards" / "ZFY0009", "ZFY0009", dd_files, args.files * size // dd_files)
            dd_one = dd_usage(work, single)
            dd_rate = args.files * size / MiB / dd_one.seconds
            for source in single:
                source.unlink()
            cameras = [
                SimulatedCamera(fast, f"ZFY3{n:03d}", files=args.files, size_bytes=size)
                for n in range(args.cameras)
            ]
            for camera in cameras:
                camera.start()
            docks = fast / "docks"
            daemon = start_daemon(
                work, udev=False, docks=docks, max_concurrent=args.cameras, rules=SERIAL_RULE
            )
            try:

                def run() -> float:
                    before = process_cpu(daemon.pid)
                    for camera in cameras:
                        camera.dock(docks)
                    while ended_sessions(work) < args.cameras:
                        if daemon.poll() is not None:
                            raise RuntimeError("the daemon exited")
                        samples.append((time.perf_counter(), dock_progress(work)))
                        time.sleep(0.25)
                    return process_cpu(daemon.pid) - before

                samples: list[Sample] = []

                usage = measure(work, run)
                rss = peak_rss_mib(daemon.pid)
            finally:
                stop(daemon)
                for camera in cameras:
                    camera.close()
        together, window_s, rates = copy_rates(samples)
        aggregate = total / MiB / usage.seconds
        ratio = aggregate / dd_rate
        print(f"{'measure':<40}{'figure':>10}{'baseline':>10}{'ratio':>8}  target")
        print(f"{'dd bs=4M conv=fsync, one stream (MiB/s)':<40}{dd_rate:>10.0f}{'':>18}  {dd_one.limit()}")
        print(
            f"{f'{args.cameras} cameras together (MiB/s)':<40}{aggregate:>10.0f}{dd_rate:>10.0f}{ratio:>8.2f}"
            f"  >= {AGGREGATE_TARGET} {'ok' if ratio >= AGGREGATE_TARGET else 'BELOW TARGET'}; "
            f"{usage.limit()}"
        )
        if rates:
            mean = statistics.fmean(rates.values())
            spread = max(abs(rate - mean) for rate in rates.values()) / mean if mean > 0 else float("inf")
            print(
                f"{'per camera (MiB/s): mean, min, max':<40}{mean:>10.1f}{min(rates.values()):>10.1f}"
                f"{max(rates.values()):>8.1f}  over {window_s:.1f} s with {together} copying at once; "
                f"farthest from the mean {spread:.0%}, target <= {SPREAD_TARGET:.0%} "
                f"{'ok' if spread <= SPREAD_TARGET else 'ABOVE TARGET'}"
            )
        else:
            print(
                f"{'per camera (MiB/s)':<40}{'-':>10}  not measured: no two progress samples saw the most "
                f"docks ({together}) copying at once; give each camera more data (--files, --size-mib)"
            )
        print(
            f"{'daemon peak RSS, VmHWM (MiB)':<40}{rss:>10.1f}{'':>18}  <= {RSS_TARGET_MIB:.0f} "
            f"{'ok' if rss <= RSS_TARGET_MIB else 'ABOVE TARGET'}"
        )
    finally:
        remove_sealed_tree(work)


if __name__ == "__main__":
    main()
