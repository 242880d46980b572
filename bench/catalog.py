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
import ast
import random
import re
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from sqlalchemy import event, func, select, text

from ingestd.control import queries
from ingestd.evidence.periods import parse_period
from ingestd.evidence.report import build_report
from store.audit import Role
from store.catalog import Catalog
from store.models import Base, Recording
from tests.support.postgres import PostgresServer, find_pg_bin

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


class _SqliteRows:
    """Bulk rows into SQLite with sqlite3, in one transaction."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("BEGIN")

    def insert(self, statement: str, rows: Iterable[tuple[Any, ...]]) -> None:
        self.db.executemany(statement, rows)

    def execute(self, statement: str) -> None:
        self.db.execute(statement)

    def finish(self) -> None:
        self.db.execute("COMMIT")
        self.db.execute("ANALYZE")
        self.db.close()


class _PostgresRows:
    """Bulk rows into PostgreSQL with COPY (the same INSERT statements, read for table and columns)."""

    def __init__(self, conninfo: str) -> None:
        self.db = psycopg.connect(conninfo)
        self.db.execute("SET TIME ZONE 'UTC'")  # the seed's timestamps are UTC without an offset

    def insert(self, statement: str, rows: Iterable[tuple[Any, ...]]) -> None:
        found = re.fullmatch(r"INSERT INTO (\w+) \(([^)]*)\) VALUES \(([^)]*)\)", statement)
        assert found is not None, statement
        # Literals among the VALUES (`0`, `'read-only'`) are filled in; each `?` takes the next field.
        values = [None if item == "?" else ast.literal_eval(item) for item in found[3].split(", ")]
        slots = [index for index, item in enumerate(found[3].split(", ")) if item == "?"]
        copy_sql = f"COPY {found[1]} ({found[2]}) FROM STDIN"
        with self.db.cursor() as cursor, cursor.copy(copy_sql) as copy:
            for row in rows:
                full = list(values)
                for slot, value in zip(slots, row, strict=True):
                    full[slot] = value
                copy.write_row(full)

    def execute(self, statement: str) -> None:
        self.db.execute(statement)

    def finish(self) -> None:
        self.db.commit()
        self.db.autocommit = True
        self.db.execute("VACUUM ANALYZE")
        self.db.close()


def seed(url: str, rows: int, *, conninfo: str | None = None) -> None:
    """Create the schema with SQLAlchemy (so indexes are the real ones), then bulk-insert with the driver:
    sqlite3 for a SQLite `url`, COPY over `conninfo` for PostgreSQL."""
    catalog = Catalog.open(url)
    Base.metadata.create_all(catalog.engine)
    catalog.close()
    rng = random.Random(20260301)
    db: _SqliteRows | _PostgresRows = (
        _PostgresRows(conninfo) if conninfo is not None else _SqliteRows(Path(url.removeprefix("sqlite:///")))
    )
    start = END - timedelta(days=DAYS)
    db.insert(
        "INSERT INTO units (id, unit_no, name) VALUES (?, ?, ?)",
        [(u, f"1101{u:08d}", f"分局{u}") for u in range(1, UNITS + 1)],
    )
    officers = [
        (o, f"{o:06d}", f"警员{o}", (o - 1) // OFFICERS_PER_UNIT + 1)
        for o in range(1, UNITS * OFFICERS_PER_UNIT + 1)
    ]
    db.insert("INSERT INTO officers (id, officer_no, name, unit_id) VALUES (?, ?, ?, ?)", officers)
    cameras = []
    for c in range(1, UNITS * CAMERAS_PER_UNIT + 1):
        unit = (c - 1) // CAMERAS_PER_UNIT + 1
        officer = (unit - 1) * OFFICERS_PER_UNIT + rng.randrange(OFFICERS_PER_UNIT) + 1
        cameras.append(
            (c, f"Z{c:06d}", "serial", unit, officer, rng.randrange(5, 101), rng.uniform(-5, 5), _ts(start))
        )
    db.insert(
        "INSERT INTO cameras (id, device_serial, driver, unit_id, assigned_officer_id, battery_percent, "
        "last_clock_offset_s, first_seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        cameras,
    )
    db.insert(
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
    db.insert(
        "INSERT INTO dock_sessions (id, dock_id, camera_id, state, started_at, ended_at, files_total, "
        "files_done, files_failed, bytes_total, bytes_done) VALUES (?, ?, ?, ?, ?, ?, 0, 0, 0, 0, 0)",
        sessions,
    )
    db.insert(
        "INSERT INTO clock_readings (camera_id, dock_session_id, measured_at, offset_s, state) "
        "VALUES (?, ?, ?, ?, ?)",
        readings,
    )
    db.insert(
        "INSERT INTO stored_objects (blake3, sha256, size, seal, stored_at) VALUES (?, ?, 1, 'read-only', ?)",
        [("0" * 64, "0" * 64, _ts(start))],
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
        db.insert(
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
    db.insert(
        "INSERT INTO flags (kind, status, dedup_key, raised_at, camera_id, details) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        overdue,
    )
    db.finish()


def timed(action: Callable[[], object], repeat: int = 5) -> float:
    action()  # warm-up: caches and prepared plans, as for a daemon that has been running
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


# Tables large enough at a million recordings that a full scan of one would break the budget.
BIG_TABLES = ("recordings", "dock_sessions", "clock_readings", "flags")


def full_scans(plan: list[str]) -> list[str]:
    """Plan lines that read a big table whole: SQLite `SCAN t` without an index, PostgreSQL `Seq Scan`."""
    found = []
    for line in plan:
        for table in BIG_TABLES:
            sqlite_scan = re.search(rf"\bSCAN {table}\b", line) and "INDEX" not in line
            if sqlite_scan or re.search(rf"Seq Scan on {table}\b", line):
                found.append(line.strip())
    return found


def explain(catalog: Catalog, statements: list[tuple[str, Any]]) -> list[str]:
    """The query plans of `statements` (as the driver ran them), on the same connection type."""
    postgres = catalog.engine.dialect.name == "postgresql"
    lines: list[str] = []
    with catalog.engine.connect() as connection:
        cursor = connection.connection.cursor()
        for statement, parameters in statements:
            if not statement.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            prefix = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
            cursor.execute(prefix + statement, parameters)
            rows = cursor.fetchall()
            lines.extend(str(row[0]) if postgres else str(row[-1]) for row in rows)
        cursor.close()
    return lines


def statements_of(catalog: Catalog, action: Callable[[], object]) -> list[tuple[str, Any]]:
    """The SQL statements and parameters `action` sends to the driver."""
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(catalog.engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        event.remove(catalog.engine, "before_cursor_execute", record)
    return statements


def run_cases(name: str, catalog: Catalog) -> None:
    """Time each query and print its plans, against `count(*)` on the same catalog."""
    zone = ZoneInfo(ZONE)
    with catalog.transaction() as db:
        sample = db.execute(select(Recording.camera_id, Recording.officer_id).where(Recording.id == 1)).one()
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
    print(f"\n{name}: {'query':<32}{'ms':>10}{'x count(*)':>12}  < 300 ms  full scans of big tables")
    print(
        f"{name}: {'SELECT count(*) (baseline)':<32}{baseline * 1000:>10.1f}{1.0:>12.2f}  "
        f"{'yes' if baseline < BUDGET_S else 'NO':<8}"
    )
    plans: list[tuple[str, list[str]]] = []
    for case, action in cases:
        seconds = timed(action)
        statements = statements_of(catalog, action)
        plan = explain(catalog, statements)
        scans = full_scans(plan)
        plans.append((case, plan))
        print(
            f"{name}: {case:<32}{seconds * 1000:>10.1f}{seconds / baseline:>12.2f}  "
            f"{'yes' if seconds < BUDGET_S else 'NO':<8}  {'; '.join(scans) if scans else 'none: indexes'}"
        )
    for case, plan in plans:
        print(f"\n{name} plan, {case}:")
        for line in plan:
            print(f"    {line}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="Recordings to seed.")
    parser.add_argument("--dir", type=Path, default=None, help="Work directory (default: a temporary one).")
    parser.add_argument("--keep", action="store_true", help="Keep the SQLite database afterwards.")
    options = parser.parse_args()
    work = options.dir or Path(tempfile.mkdtemp(prefix="bench-catalog-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "catalog.db"
    path.unlink(missing_ok=True)
    try:
        started = time.perf_counter()
        seed(f"sqlite:///{path}", options.rows)
        print(
            f"SQLite: seeded {options.rows:,} recordings in {time.perf_counter() - started:.1f} s "
            f"({path.stat().st_size / 2**20:.0f} MiB) at {path}"
        )
        catalog = Catalog.open(f"sqlite:///{path}", read_only=True)
        try:
            run_cases("SQLite", catalog)
        finally:
            catalog.close()
    finally:
        if not options.keep and options.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    bin_dir = find_pg_bin()
    if bin_dir is None:
        print("\nPostgreSQL: not measured: no server binaries (initdb, pg_ctl); install Debian's postgresql")
        return
    base = Path(tempfile.mkdtemp(prefix="bench-catalog-pg-"))
    base.chmod(0o755)
    server = PostgresServer(bin_dir, base)
    try:
        server.start()
        conninfo = f"host={server.socket_dir} port={server.port} user=postgres dbname=postgres"
        started = time.perf_counter()
        seed(server.url(), options.rows, conninfo=conninfo)
        print(f"\nPostgreSQL: seeded {options.rows:,} recordings in {time.perf_counter() - started:.1f} s")
        catalog = Catalog.open(server.url(), read_only=True)
        try:
            run_cases("PostgreSQL", catalog)
        finally:
            catalog.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
