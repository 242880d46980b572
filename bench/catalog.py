"""Interactive catalog queries against a bare `SELECT count(*)` on the same seeded SQLite database.

Seeds a temporary catalog with N recordings (default 1,000,000) spread over a year, 20 units, 400
officers, 500 cameras, their dock sessions and clock readings, and flags (late, gap, overdue; some open),
then times, warm (median of 5 after one warm-up):
- status: the docks with their open sessions and the open-flag counts (ingestd.control.queries.status);
- footage by device and a week; footage by officer, late only (ingestd.control.queries.footage);
- report for a month, by unit and by officer (ingestd.evidence.report.build_report);
each beside count(*) on the same database, with the ratio and whether it is under 300 ms.

    .venv/bin/python -m bench.catalog [--rows 1000000] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, text

from ingestd.control import queries
from ingestd.evidence.periods import parse_period
from ingestd.evidence.report import build_report
from store.audit import Role
from store.catalog import Catalog
from store.models import Base, Recording

BUDGET_S = 0.300
UNITS, OFFICERS_PER_UNIT, CAMERAS_PER_UNIT, DOCKS = 20, 20, 25, 16
END = datetime(2026, 4, 1, tzinfo=UTC)
DAYS = 365
BATCH = 50_000
ZONE = "Asia/Shanghai"


def _ts(value: datetime) -> str:
    # SQLAlchemy's SQLite DATETIME storage form; UTCDateTime stores UTC without the offset.
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _batches(rows: Iterator[tuple[Any, ...]], size: int = BATCH) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def seed(path: Path, rows: int) -> None:
    """Create the schema with SQLAlchemy (so indexes are the real ones), then bulk-insert with sqlite3."""
    catalog = Catalog.open(f"sqlite:///{path}")
    Base.metadata.create_all(catalog.engine)
    catalog.close()
    rng = random.Random(20260301)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("BEGIN")
    start = END - timedelta(days=DAYS)
    db.executemany(
        "INSERT INTO units (id, unit_no, name) VALUES (?, ?, ?)",
        [(u, f"1101{u:08d}", f"分局{u}") for u in range(1, UNITS + 1)],
    )
    officers = [
        (o, f"{o:06d}", f"警员{o}", (o - 1) // OFFICERS_PER_UNIT + 1)
        for o in range(1, UNITS * OFFICERS_PER_UNIT + 1)
    ]
    db.executemany("INSERT INTO officers (id, officer_no, name, unit_id) VALUES (?, ?, ?, ?)", officers)
    cameras = []
    for c in range(1, UNITS * CAMERAS_PER_UNIT + 1):
        unit = (c - 1) // CAMERAS_PER_UNIT + 1
        officer = (unit - 1) * OFFICERS_PER_UNIT + rng.randrange(OFFICERS_PER_UNIT) + 1
        cameras.append(
            (c, f"Z{c:06d}", "serial", unit, officer, rng.randrange(5, 101), rng.uniform(-5, 5), _ts(start))
        )
    db.executemany(
        "INSERT INTO cameras (id, device_serial, driver, unit_id, assigned_officer_id, battery_percent, "
        "last_clock_offset_s, first_seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        cameras,
    )
    db.executemany(
        "INSERT INTO docks (id, port, state, bytes_done, bytes_total, updated_at) VALUES (?, ?, ?, 0, 0, ?)",
        [(d, f"1-{d}", "empty", _ts(END)) for d in range(1, DOCKS + 1)],
    )
    # One dock session and clock reading per camera-day; the last day's sessions of 4 docks stay open.
    sessions = []
    readings = []
    sid = 0
    for day in range(DAYS):
        at = start + timedelta(days=day, hours=10)
        for camera in range(1, len(cameras) + 1):
            sid += 1
            open_now = day == DAYS - 1 and camera <= 4
            sessions.append(
                (
                    sid,
                    camera % DOCKS + 1,
                    camera,
                    "ingesting" if open_now else "done",
                    _ts(at),
                    None if open_now else _ts(at + timedelta(minutes=20)),
                )
            )
            readings.append((camera, sid, _ts(at), rng.gauss(0, 3), "synced"))
    db.executemany(
        "INSERT INTO dock_sessions (id, dock_id, camera_id, state, started_at, ended_at, files_total, "
        "files_done, files_failed, bytes_total, bytes_done) VALUES (?, ?, ?, ?, ?, ?, 0, 0, 0, 0, 0)",
        sessions,
    )
    db.executemany(
        "INSERT INTO clock_readings (camera_id, dock_session_id, measured_at, offset_s, state) "
        "VALUES (?, ?, ?, ?, ?)",
        readings,
    )
    db.execute(
        "INSERT INTO stored_objects (blake3, sha256, size, seal, stored_at) VALUES (?, ?, 1, 'read-only', ?)",
        ("0" * 64, "0" * 64, _ts(start)),
    )

    def recordings() -> Iterator[tuple[Any, ...]]:
        for rid in range(1, rows + 1):
            camera = cameras[rng.randrange(len(cameras))]
            officer = (
                camera[4]
                if rng.random() < 0.9
                else (camera[3] - 1) * OFFICERS_PER_UNIT + rng.randrange(OFFICERS_PER_UNIT) + 1
            )
            recorded = start + timedelta(seconds=rng.randrange(DAYS * 86400))
            duration = rng.randrange(30, 1800) if rng.random() < 0.9 else None
            deadline = recorded + timedelta(seconds=duration or 0, hours=24)
            ingested = (
                deadline + timedelta(hours=rng.randrange(1, 48))
                if rng.random() < 0.05
                else recorded + timedelta(hours=rng.randrange(1, 20))
            )
            yield (
                rid,
                camera[0],
                officer,
                camera[3],
                f"DCIM/{rid:08d}.MP4",
                f"k{rid}",
                rng.randrange(50, 500) << 20,
                _ts(recorded),
                _ts(recorded),
                "mvhd",
                duration,
                _ts(ingested),
                _ts(deadline),
                "0" * 64,
                "0" * 64,
                "standard",
                "[]",
                0,
                "normal",
            )

    for batch in _batches(recordings()):
        db.executemany(
            "INSERT INTO recordings (id, camera_id, officer_id, unit_id, original_path, source_key, size, "
            "recorded_at_raw, recorded_at, recorded_at_source, duration_s, ingested_at, deadline_at, blake3, "
            "sha256, retention_class, retention_tags, legal_hold, confidentiality) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            batch,
        )

    # Flags from the recordings themselves: every late one, a gap on ~1 %, overdue per camera-month.
    db.execute(
        "INSERT INTO flags (kind, status, dedup_key, raised_at, camera_id, recording_id, details) "
        "SELECT 'late', CASE WHEN id % 10 = 0 THEN 'open' ELSE 'explained' END, 'late:' || id, ingested_at, "
        "camera_id, id, '{}' FROM recordings WHERE ingested_at > deadline_at"
    )
    db.execute(
        "INSERT INTO flags (kind, status, dedup_key, raised_at, camera_id, recording_id, details) "
        "SELECT 'gap', CASE WHEN id % 7 = 0 THEN 'open' ELSE 'explained' END, 'gap:' || id, ingested_at, "
        "camera_id, id, '{}' FROM recordings WHERE id % 97 = 0"
    )
    overdue = [
        (
            "overdue",
            "open" if n % 5 == 0 else "resolved",
            f"overdue:{c[0]}:{n}",
            _ts(start + timedelta(days=30 * n + rng.randrange(28))),
            c[0],
            f'{{"holder_officer_no": "{c[4]:06d}"}}',
        )
        for c in cameras
        for n in range(12)
    ]
    db.executemany(
        "INSERT INTO flags (kind, status, dedup_key, raised_at, camera_id, details) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        overdue,
    )
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.close()


def timed(action: Callable[[], object], repeat: int = 5) -> float:
    action()  # warm-up: caches and prepared plans, as for a daemon that has been running
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="Recordings to seed.")
    parser.add_argument("--dir", type=Path, default=None, help="Work directory (default: a temporary one).")
    parser.add_argument("--keep", action="store_true", help="Keep the database afterwards.")
    options = parser.parse_args()
    work = options.dir or Path(tempfile.mkdtemp(prefix="bench-catalog-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "catalog.db"
    path.unlink(missing_ok=True)
    try:
        started = time.perf_counter()
        seed(path, options.rows)
        print(
            f"seeded {options.rows:,} recordings in {time.perf_counter() - started:.1f} s "
            f"({path.stat().st_size / 2**20:.0f} MiB) at {path}"
        )
        catalog = Catalog.open(f"sqlite:///{path}", read_only=True)
        zone = ZoneInfo(ZONE)
        with catalog.transaction() as db:
            sample = db.execute(
                select(Recording.camera_id, Recording.officer_id).where(Recording.id == 1)
            ).one()
            serial = db.scalar(text("SELECT device_serial FROM cameras WHERE id = :i"), {"i": sample[0]})
            officer_no = db.scalar(text("SELECT officer_no FROM officers WHERE id = :i"), {"i": sample[1]})
        month = parse_period(month="2026-03", start=None, end=None, zone=ZONE)

        def run(action: Callable[[Any], object]) -> Callable[[], object]:
            def once() -> object:
                with catalog.transaction() as db:
                    return action(db)

            return once

        cases: list[tuple[str, Callable[[], object]]] = [
            (
                "status (docks + open flags)",
                run(lambda s: queries.status(s, free_bytes=None, store_root="", now=END)),
            ),
            (
                "footage device + week",
                run(
                    lambda s: queries.footage(
                        s,
                        {"device": serial, "since": "2026-03-02", "until": "2026-03-08"},
                        zone=zone,
                        role=Role.ADMIN,
                    )
                ),
            ),
            (
                "footage officer + late",
                run(
                    lambda s: queries.footage(
                        s, {"officer": officer_no, "late": True}, zone=zone, role=Role.ADMIN
                    )
                ),
            ),
            ("report month by unit+officer", run(lambda s: build_report(s, month))),
        ]
        baseline = timed(run(lambda s: s.scalar(select(func.count()).select_from(Recording))))
        print(f"\n{'query':<32}{'ms':>10}{'x count(*)':>12}  < 300 ms")
        print(
            f"{'SELECT count(*) (baseline)':<32}{baseline * 1000:>10.1f}{1.0:>12.2f}  "
            f"{'yes' if baseline < BUDGET_S else 'NO'}"
        )
        for name, action in cases:
            seconds = timed(action)
            print(
                f"{name:<32}{seconds * 1000:>10.1f}{seconds / baseline:>12.2f}  "
                f"{'yes' if seconds < BUDGET_S else 'NO'}"
            )
        catalog.close()
    finally:
        if not options.keep and options.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
