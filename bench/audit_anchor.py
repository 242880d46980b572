"""What signing the chain's head after every command costs, beside the command's own audited commit.

On a temporary SQLite catalog (a file, WAL, as the station runs it) with a real checkpoint file, times
N single-event transactions as a control command writes them (the baseline), then N more each followed
by `AuditLog.anchor` (one indexed read, one Ed25519 signature, one fsynced line), and prints the median
and 95th percentile of both with the ratio.

    .venv/bin/python -m bench.audit_anchor [--events 500] [--dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from store.audit import Actor, AuditLog, Role
from store.catalog import Catalog
from store.models import Base
from store.signing import Signer
from store.types import utcnow

ADMIN = Actor(user="bench", uid=0, role=Role.ADMIN, source="ctl:uid=0")


def _timed(count: int, step: Callable[[int], None]) -> list[float]:
    times = []
    for n in range(count):
        started = time.perf_counter()
        step(n)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=None, help="Work here (default: a temporary directory).")
    options = parser.parse_args()
    work = options.dir or Path(tempfile.mkdtemp(prefix="bench-anchor-"))
    state = work / "state"
    try:
        catalog = Catalog.open(f"sqlite:///{work / 'catalog.db'}")
        Base.metadata.create_all(catalog.engine)
        audit = AuditLog(Signer.load_or_create(state), state / "audit-checkpoints.jsonl", 1_000_000_000)

        def command(n: int) -> None:
            with catalog.transaction() as db:
                audit.append(db, actor=ADMIN, action="ctl.bench", subject=str(n), at=utcnow())

        def anchored(n: int) -> None:
            command(n)
            audit.anchor(catalog)

        command(-1)  # warm up: the head row, the key, the connection
        baseline = _timed(options.events, command)
        with_anchor = _timed(options.events, anchored)
        catalog.close()
        for name, times in (("audited commit", baseline), ("commit + anchor", with_anchor)):
            median = statistics.median(times) * 1000
            p95 = statistics.quantiles(times, n=20)[-1] * 1000
            print(f"{name:>16}: median {median:7.2f} ms   p95 {p95:7.2f} ms")
        ratio = statistics.median(with_anchor) / statistics.median(baseline)
        print(f"{'anchor / commit':>16}: {ratio:.2f}x ({options.events} events each)")
    finally:
        if options.dir is None:
            # The checkpoint file got the append-only attribute (as root): lift it, or it cannot go.
            checkpoints = str(state / "audit-checkpoints.jsonl")
            subprocess.run(["chattr", "-a", checkpoints], check=False, capture_output=True)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
