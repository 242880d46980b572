"""FileObjectStore.put against `dd bs=4M conv=fsync` on the same filesystem, with caches dropped.

Prints MiB/s for dd, put without read-back and put with read-back, the ratios against the targets
(0.9 each: where the disk is the limit, read-back must not cost wall time), and the peak RSS of each
put (every put runs in its own child process), including a small file next to a large one to show
that memory does not grow with the file. Beside them, "dd+read-back": dd's copy, then dd reading the
copy back with O_DIRECT, the bytes a put with read-back moves over the disk; where one disk's reads and
writes share its bandwidth, that, not dd alone, bounds a put with read-back.

    .venv/bin/python -m bench.store_put [--files 4] [--size-mib 512] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import drop_caches, make_source, run_dd
from ingestd.demo import remove_sealed_tree
from store.objects import FileObjectStore, MiB

TARGETS = {"put": 0.9, "put+read-back": 0.9}


@dataclass(frozen=True)
class PutRun:
    seconds: float
    peak_rss_mib: float


def run_put(source: Path, root: Path, *, read_back: bool) -> PutRun:
    """One put in a fresh child process, so its peak RSS is its own."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.store_put",
            "--child",
            str(source),
            "--root",
            str(root),
            *(["--read-back"] if read_back else []),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    report = json.loads(done.stdout.splitlines()[-1])  # earlier lines are the store's own log
    return PutRun(float(report["seconds"]), float(report["peak_rss_kib"]) / 1024)


def child(source: Path, root: Path, *, read_back: bool) -> None:
    store = FileObjectStore(root, read_back=read_back).create_directories()
    drop_caches()
    started = time.perf_counter()
    with source.open("rb") as handle:
        result = store.put(handle)
    elapsed = time.perf_counter() - started
    store.remove(result.blake3)  # the next run must store, not deduplicate
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"seconds": elapsed, "peak_rss_kib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--dir", type=Path, default=None, help="where sources, dd copies and the store go")
    parser.add_argument("--keep", action="store_true", help="keep the source files for the next run")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--read-back", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.root, read_back=args.read_back)
        return

    workdir = Path(tempfile.mkdtemp(prefix="store-bench-", dir=args.dir))
    try:
        bench(workdir, args.files, args.size_mib * MiB)
    finally:
        if not args.keep:
            remove_sealed_tree(workdir)


def bench(workdir: Path, files: int, size: int) -> None:
    sources = [workdir / f"source-{n}.bin" for n in range(files)]
    for source in sources:
        make_source(source, size)
    cold = drop_caches()
    caches = "caches dropped before every run" if cold else "NOT root: caches not dropped, figures are warm"
    print(f"{files} x {size // MiB} MiB in {workdir}; {caches}")

    seconds: dict[str, list[float]] = {"dd": [], "dd+read-back": [], "put": [], "put+read-back": []}
    rss: dict[str, list[float]] = {"put": [], "put+read-back": []}
    for source in sources:  # interleaved, so drift in the disk affects every mode alike
        seconds["dd"].append(run_dd(source, workdir / "dd-copy.bin").seconds)
        seconds["dd+read-back"].append(run_dd(source, workdir / "dd-copy.bin", read_back=True).seconds)
        for mode, read_back in (("put", False), ("put+read-back", True)):
            run = run_put(source, workdir / "store", read_back=read_back)
            seconds[mode].append(run.seconds)
            rss[mode].append(run.peak_rss_mib)

    def rate(mode: str) -> float:
        return files * size / MiB / sum(seconds[mode])

    baseline = rate("dd")
    print(f"{'mode':<22}{'MiB/s':>8}{'median s':>10}{'ratio':>8}{'target':>8}{'peak RSS MiB':>14}")
    for mode, runs in seconds.items():
        ratio = rate(mode) / baseline
        target = TARGETS.get(mode)
        verdict = "" if target is None else ("  ok" if ratio >= target else "  BELOW TARGET")
        peak = f"{max(rss[mode]):>14.1f}" if mode in rss else f"{'':>14}"
        print(
            f"{mode:<22}{rate(mode):>8.0f}{statistics.median(runs):>10.3f}{ratio:>8.2f}"
            f"{'' if target is None else target:>8}{peak}{verdict}"
        )
    print(
        f"put+read-back against dd+read-back (the same bytes over the disk): "
        f"{rate('put+read-back') / rate('dd+read-back'):.2f}"
    )

    small = workdir / "small.bin"
    make_source(small, 16 * MiB)
    small_rss = run_put(small, workdir / "store", read_back=True).peak_rss_mib
    print(
        f"peak RSS of put+read-back: {small_rss:.1f} MiB for 16 MiB, "
        f"{max(rss['put+read-back']):.1f} MiB for {size // MiB} MiB (flat: a fixed ring of buffers)"
    )


if __name__ == "__main__":
    main()
