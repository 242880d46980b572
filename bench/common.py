"""What every benchmark needs: cold caches, random source files, the dd baseline, a child's peak RSS, and
what a run used (its CPU, the machine's CPU, the store disk's busy time) with the resource that limited it."""

from __future__ import annotations

import os
import resource
import subprocess
import time
from collections.abc import Callable, Sequence
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


def dd_copy(source: Path, target: Path, *, read_back: bool = False) -> Measured:
    """`dd bs=4M conv=fsync` copying `source` to `target`; with `read_back`, then `dd iflag=direct` reading
    the copy from the medium: the bytes an ingest with read-back moves over the store's disk, moved by
    dd one pass after the other (their seconds and CPU added up)."""
    copied = run_measured(dd_command(source, target))
    if not read_back:
        return copied
    read = run_measured(["dd", f"if={target}", "of=/dev/null", "bs=4M", "iflag=direct", "status=none"])
    return Measured(
        copied.output + read.output,
        copied.seconds + read.seconds,
        max(copied.peak_rss_mib, read.peak_rss_mib),
        copied.cpu_seconds + read.cpu_seconds,
    )


def run_dd(source: Path, target: Path, *, read_back: bool = False) -> Measured:
    """`dd_copy` from a cold cache; the copy is removed."""
    drop_caches()
    measured = dd_copy(source, target, read_back=read_back)
    target.unlink()
    return measured


def cpu_seconds() -> float:
    """User+sys CPU seconds of this process so far, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


SATURATED = 0.7  # a resource busy this share of the run is taken to be what limits it


@dataclass(frozen=True)
class Usage:
    """What one run used: wall seconds, CPU seconds of the process measured and of the whole machine
    (every process, from /proc/stat), and the store disk's busy seconds (from /proc/diskstats)."""

    seconds: float
    cpu: float
    machine_cpu: float
    disk_busy: float

    def limit(self) -> str:
        cores = os.cpu_count() or 1
        ours, machine = self.cpu / self.seconds, self.machine_cpu / self.seconds
        disk = self.disk_busy / self.seconds
        if machine / cores >= SATURATED and machine / cores >= disk:
            # On a shared machine other processes may hold the cores: the run then waits for CPU while
            # its own CPU time stays low.
            which = "CPU" if ours >= machine / 2 else "CPU, mostly other processes'"
        elif disk >= SATURATED:
            which = "disk"
        else:
            # A virtual disk throttled by its host shows little busy time while it is the limit.
            which = "I/O or waits, not CPU"
        return f"{which} (CPU ours {ours:.2f}, machine {machine:.2f} of {cores} cores; disk busy {disk:.0%})"


def _disk_name(path: Path) -> str | None:
    """The /proc/diskstats name of the block device holding `path`, or None (tmpfs, overlay...)."""
    number = path.stat().st_dev
    sysfs = Path(f"/sys/dev/block/{os.major(number)}:{os.minor(number)}")
    if not sysfs.exists():
        return None
    return sysfs.resolve().name


def _disk_busy_ms(name: str | None) -> float:
    if name is None:
        return 0.0
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if fields[2] == name:
            return float(fields[12])  # io_ticks: milliseconds the device had I/O in flight
    return 0.0


def process_cpu(pid: int) -> float:
    """User+sys CPU seconds of a running process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> float:
    """CPU seconds every process on the machine has used so far (user, nice, system, irq, softirq and
    the steal of a virtual machine), all cores."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def measure(work: Path, run: Callable[[], float]) -> Usage:
    """Run `run` (which returns the CPU seconds of what it measured), the machine's CPU and the disk's
    busy time meanwhile."""
    disk = _disk_name(work)
    busy, machine = _disk_busy_ms(disk), machine_cpu()
    started = time.perf_counter()
    cpu = run()
    seconds = time.perf_counter() - started
    return Usage(seconds, cpu, machine_cpu() - machine, (_disk_busy_ms(disk) - busy) / 1000)


DD_RUNS = 3  # dd's wall time on a virtual machine swings by 2x or more between runs a minute apart


def dd_usage(work: Path, sources: list[Path], *, read_back: bool = False) -> Usage:
    """Single-stream `dd_copy` of each source in turn, each from a cold cache, DD_RUNS times: the median
    pass by seconds, with dd's own CPU and the machine's CPU and the disk's busy time while dd ran (the
    cache drops left out)."""
    passes = sorted(
        (_dd_pass(work, sources, read_back=read_back) for _ in range(DD_RUNS)), key=lambda u: u.seconds
    )
    return passes[len(passes) // 2]


def _dd_pass(work: Path, sources: list[Path], *, read_back: bool) -> Usage:
    target = work / "dd-copy.bin"
    runs: list[Measured] = []
    usages: list[Usage] = []
    for source in sources:
        drop_caches()

        def run(source: Path = source) -> float:
            runs.append(dd_copy(source, target, read_back=read_back))
            return runs[-1].cpu_seconds

        usages.append(measure(work, run))
        target.unlink()
    return Usage(
        sum(r.seconds for r in runs),
        sum(u.cpu for u in usages),
        sum(u.machine_cpu for u in usages),
        sum(u.disk_busy for u in usages),
    )
