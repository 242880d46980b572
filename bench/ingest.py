"""Ingest throughput, concurrency, memory and dock latency, each beside a baseline from the same run.

1. one camera: `ingestd import` (read-back on) of F files of S MiB, against `dd bs=4M conv=fsync`
   copying the same files on the same filesystem (target >= 0.9 where the disk is the limit), and
   against `FileObjectStore.put` with read-back of the same files (as `bench.store_put` runs it), so
   what the session adds to the store's copy is its own ratio, like with like, and against dd's copy
   followed by dd reading it back with O_DIRECT (the bytes an ingest with read-back moves over the
   disk, moved by dd);
2. N cameras at once through the real daemon (watched folder), against the same single-stream dd rate
   (target >= 0.9: the disk is the limit);
3. peak RSS of `ingestd import` with one large recording against a small one (target: flat).
Dock-to-first-byte is `bench.first_byte`.

Runs 1 and 2 and dd print the resource that limited them (bench.common.Usage; for the import, over the
whole process, its start-up included).

    .venv/bin/python -m bench.ingest [--files 4] [--size-mib 256] [--cameras 8] [--big-gib 4] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.common import (
    Measured,
    MiB,
    Usage,
    dd_usage,
    drop_caches,
    make_source,
    measure,
    process_cpu,
    run_measured,
)
from bench.store_put import run_put
from drivers.base import CameraIdentity
from drivers.mass_storage import IDENTITY_FILE, format_identity_file
from ingestd.demo import remove_sealed_tree
from store.catalog import Catalog
from store.models import DockVisit

TARGETS = {"one camera": 0.9, "cameras at once": 0.9}
REPO = Path(__file__).resolve().parents[1]


def make_card(directory: Path, serial: str, files: int, size: int) -> list[Path]:
    """A camera card: an identity file and `files` recordings of random bytes."""
    identity = CameraIdentity(serial, "000101", "张三", "110105000000", "朝阳分局", source="identity-file")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / IDENTITY_FILE).write_bytes(format_identity_file(identity))
    paths = [directory / "DCIM" / f"{serial}_{n:04d}.MP4" for n in range(files)]
    for path in paths:
        make_source(path, size)
    return paths


def write_config(
    work: Path, *, udev: bool, docks: Path | None = None, max_concurrent: int = 8, rules: str = ""
) -> Path:
    """The station's config under `work`; cards dock in `docks` (default `work/docks`); `rules` are
    `[[camera]]` rules matched before the benchmark's own."""
    config = work / "config.toml"
    config.write_text(
        f"""
[daemon]
state_dir = "{work / "state"}"
log_format = "json"
[catalog]
url = "sqlite:///{work / "state" / "catalog.db"}"
[store]
root = "{work / "store"}"
[control]
socket = "{work / "control.sock"}"
[ingest]
max_concurrent = {max_concurrent}
delete_after_ingest = false
[detection]
udev = {str(udev).lower()}
udev_source = "kernel"
watch_folders = ["{docks or work / "docks"}"]
{rules}
[[camera]]
match = {{ SUBSYSTEM = "folder" }}
driver = "mass-storage"
[[camera]]
match = {{ SUBSYSTEM = "block", LOOP_BACKING_FILE = "*-bench-card.img" }}
driver = "mass-storage"
filesystems = ["ext4"]  # the benchmark's card images are ext4
""",
        encoding="utf-8",
    )
    return config


def ingestd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ingestd", *args]


def reset(work: Path) -> None:
    for name in ("store", "state", "docks"):
        remove_sealed_tree(work / name)


@dataclass(frozen=True)
class OneCamera:
    """One camera's import beside its baselines, all over the same files."""

    dd: Usage
    dd_read_back: Usage  # dd's copy, then dd reading it back with O_DIRECT: the bytes an ingest moves
    usage: Usage  # the import's, start-up included
    rate: float  # MiB/s over the session's own seconds
    summary: dict[str, Any]  # the import's --json summary: seconds, copy_seconds, read_back_seconds
    put_rate: float  # MiB/s of store.put with read-back, one child process per file


def one_camera(work: Path, files: int, size: int) -> OneCamera:
    card = work / "cards" / "ZFY0001"
    sources = make_card(card, "ZFY0001", files, size)
    dd = dd_usage(work, sources)
    dd_read_back = dd_usage(work, sources, read_back=True)
    reset(work)
    config = write_config(work, udev=False)
    drop_caches()
    runs: list[Measured] = []

    def run() -> float:
        command = ingestd("import", str(card), "--device-id", "ZFY0001", "--json", "--config", str(config))
        runs.append(run_measured(command, cwd=REPO))
        return runs[-1].cpu_seconds

    usage = measure(work, run)
    summary = json.loads(runs[-1].output.splitlines()[-1])
    assert summary["files"] == files, summary
    put_seconds = sum(run_put(source, work / "put-store", read_back=True).seconds for source in sources)
    remove_sealed_tree(work / "put-store")
    mib = files * size / MiB
    return OneCamera(dd, dd_read_back, usage, mib / summary["seconds"], summary, mib / put_seconds)


def start_daemon(
    work: Path, *, udev: bool, docks: Path | None = None, max_concurrent: int = 8, rules: str = ""
) -> subprocess.Popen[bytes]:
    reset(work)
    config = write_config(work, udev=udev, docks=docks, max_concurrent=max_concurrent, rules=rules)
    (docks or work / "docks").mkdir(parents=True, exist_ok=True)
    with (work / "daemon.log").open("ab") as log:
        daemon = subprocess.Popen(ingestd("run", "--config", str(config)), stdout=log, stderr=log, cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if '"event": "ready"' in (work / "daemon.log").read_text(errors="replace"):
            return daemon
        time.sleep(0.05)
    daemon.kill()
    raise RuntimeError("the daemon did not become ready")


def ended_sessions(work: Path) -> int:
    catalog = Catalog.open(f"sqlite:///{work / 'state' / 'catalog.db'}", read_only=True)
    try:
        with catalog.transaction() as db:
            return int(
                db.scalar(select(func.count()).select_from(DockVisit).where(DockVisit.ended_at.is_not(None)))
                or 0
            )
    finally:
        catalog.close()


def stop(daemon: subprocess.Popen[bytes]) -> None:
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout=120)
    except subprocess.TimeoutExpired:
        daemon.kill()


def dock_and_wait(daemon: subprocess.Popen[bytes], work: Path, cards: list[Path], docks: Path) -> float:
    """Dock every card at the same moment and wait for all their sessions to end: the daemon's CPU
    seconds over that span."""
    before = process_cpu(daemon.pid)
    for card in cards:
        card.rename(docks / card.name)
    while ended_sessions(work) < len(cards):
        if daemon.poll() is not None:
            raise RuntimeError("the daemon exited")
        time.sleep(0.02)
    return process_cpu(daemon.pid) - before


def cameras_at_once(work: Path, cameras: int, files: int, size: int) -> tuple[float, Usage]:
    """(MiB/s, usage) for `cameras` cards docked at the same moment, dock to last session end."""
    cards = [work / "cards" / f"ZFY1{n:03d}" for n in range(cameras)]
    for card in cards:
        make_card(card, card.name, files, size)
    daemon = start_daemon(work, udev=False)
    try:
        drop_caches()

        usage = measure(work, lambda: dock_and_wait(daemon, work, cards, work / "docks"))
        for card in cards:
            (work / "docks" / card.name).rename(card)
    finally:
        stop(daemon)
    return cameras * files * size / MiB / usage.seconds, usage


def peak_rss(work: Path, size: int) -> float:
    card = work / "cards" / f"rss-{size // MiB}"
    make_card(card, "ZFY0002", 1, size)
    reset(work)
    config = write_config(work, udev=False)
    rss = run_measured(
        ingestd("import", str(card), "--device-id", "ZFY0002", "--config", str(config)), cwd=REPO
    ).peak_rss_mib
    shutil.rmtree(card)
    return rss


def verdict(ratio: float, target: float) -> str:
    return "ok" if ratio >= target else "BELOW TARGET"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--big-gib", type=float, default=4.0)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-", dir=args.dir))
    size = args.size_mib * MiB
    try:
        cold = "caches dropped before runs" if drop_caches() else "NOT root: warm caches"
        print(f"ingest benchmark in {work} at {datetime.now(UTC):%Y-%m-%d %H:%M}Z; {cold}")
        camera = one_camera(work, args.files, size)
        dd, one, put, summary = camera.dd, camera.rate, camera.put_rate, camera.summary
        dd_rate = args.files * size / MiB / dd.seconds
        print(f"{'measure':<34}{'figure':>12}{'baseline':>12}{'ratio':>8}{'target':>8}")
        print(f"{'dd bs=4M conv=fsync (MiB/s)':<34}{dd_rate:>12.0f}{'':>28}  limit: {dd.limit()}")
        floor_rate = args.files * size / MiB / camera.dd_read_back.seconds
        print(
            f"{'dd, then dd reading it back':<34}{floor_rate:>12.0f}{dd_rate:>12.0f}"
            f"{floor_rate / dd_rate:>8.2f}{'':>8}  the bytes an ingest with read-back moves; "
            f"limit: {camera.dd_read_back.limit()}"
        )
        ratio = one / dd_rate
        print(
            f"{'one camera, read-back (MiB/s)':<34}{one:>12.0f}{dd_rate:>12.0f}{ratio:>8.2f}"
            f"{TARGETS['one camera']:>8}  {verdict(ratio, TARGETS['one camera'])}; "
            f"limit: {camera.usage.limit()}"
        )
        seconds, copy, read_back = summary["seconds"], summary["copy_seconds"], summary["read_back_seconds"]
        print(
            f"{'  of its seconds':<34}{seconds:>11.2f}s  copy {copy:.2f} s, read-back {read_back:.2f} s, "
            f"the session's own {seconds - copy - read_back:.2f} s"
        )
        print(
            f"{'store.put, same files, read-back':<34}{put:>12.0f}{dd_rate:>12.0f}{put / dd_rate:>8.2f}"
            f"{'':>8}  the session against it: {one / put:.2f} (like with like)"
        )
        against = one / floor_rate
        print(f"{'one camera against dd+read-back':<34}{against:>32.2f}  the same bytes over the disk")
        many, many_usage = cameras_at_once(work, args.cameras, args.files, size // 2)
        ratio = many / dd_rate
        label = f"{args.cameras} cameras at once (MiB/s)"
        print(
            f"{label:<34}{many:>12.0f}{dd_rate:>12.0f}{ratio:>8.2f}"
            f"{TARGETS['cameras at once']:>8}  {verdict(ratio, TARGETS['cameras at once'])}; "
            f"limit: {many_usage.limit()}"
        )
        small_rss = peak_rss(work, 64 * MiB)
        big = int(args.big_gib * 1024) * MiB
        big_rss = peak_rss(work, big)
        flat = "flat" if big_rss <= small_rss * 1.2 + 8 else "GROWS"
        print(
            f"{f'peak RSS, {big // MiB} MiB file (MiB)':<34}{big_rss:>12.1f}{small_rss:>12.1f}"
            f"{big_rss / small_rss:>8.2f}{'':>8}  {flat} (baseline: 64 MiB file)"
        )
    finally:
        remove_sealed_tree(work)


if __name__ == "__main__":
    main()
