"""What every benchmark needs: cold caches, random source files, the dd baseline and a child's peak RSS."""

from __future__ import annotations

import os
import resource
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024


def drop_caches() -> bool:
    """Start every run cold. Needs root; without it the figures include whatever the cache holds."""
    os.sync()
    if os.geteuid() != 0:
        return False
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def make_source(path: Path, size: int) -> None:
    """Incompressible bytes, written once and reused while the file has the right size."""
    if path.exists() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for _ in range(size // (4 * MiB)):
            out.write(os.urandom(4 * MiB))
        out.write(os.urandom(size % (4 * MiB)))
        out.flush()
        os.fsync(out.fileno())


@dataclass(frozen=True)
class Measured:
    """One child process: its stdout, wall seconds, peak RSS and CPU seconds (user+sys, all threads)."""

    output: str
    seconds: float
    peak_rss_mib: float
    cpu_seconds: float


def run_measured(args: Sequence[str], *, cwd: Path | None = None) -> Measured:
    """Run a command; its peak RSS and CPU time are its own (from wait4), not the benchmark's."""
    started = time.perf_counter()
    with subprocess.Popen(list(args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=cwd) as child:
        assert child.stdout is not None
        output = child.stdout.read().decode()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"{args[0]} exited {child.returncode}: {output[-2000:]}")
    # ru_maxrss is KiB on Linux
    return Measured(output, elapsed, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)


def dd_command(source: Path, target: Path) -> list[str]:
    return ["dd", f"if={source}", f"of={target}", "bs=4M", "conv=fsync", "status=none"]


def run_dd(source: Path, target: Path) -> Measured:
    """`dd bs=4M conv=fsync` copying `source` from a cold cache; the copy is removed."""
    drop_caches()
    measured = run_measured(dd_command(source, target))
    target.unlink()
    return measured


def cpu_seconds() -> float:
    """User+sys CPU seconds of this process so far, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
