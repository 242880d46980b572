"""The read-only queries (`ingestd.control.queries`) only read: each one answers on a SQLite catalog opened
with mode=ro (any write would raise), and the file stays byte for byte the same. Writes (the verify
outcome, a search's audit event) belong to the handler or operation that owns them."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from ingestd import records
from ingestd.control import queries
from ingestd.verify import VerifyOutcome, record_outcome
from store.audit import Actor, Role
from store.catalog import Catalog
from store.models import Flag, FlagKind
from tests.support import records as seed

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
ZONE = ZoneInfo("Asia/Shanghai")
AUDITOR = Actor(user="wang.auditor", uid=1002, role=Role.AUDITOR, source="ctl:uid=1002")

# Every query, as its handler (or the direct read of a stopped station) calls it.
CALLS: dict[str, Callable[[Session], Any]] = {
    "last_verify": queries.last_verify,
    "open_flag_counts": queries.open_flag_counts,
    "docks": queries.docks,
    "status": lambda s: queries.status(s, free_bytes=1 << 30, store_root="/srv/store", now=NOW),
    "cameras": lambda s: queries.cameras(s, {"serial": "ZFY0001"}),
    "officers": lambda s: queries.officers(s, {}),
    "footage": lambda s: queries.footage(s, {"device": "ZFY0001"}, zone=ZONE, role=Role.VIEWER),
    "audit_events": lambda s: queries.audit_events(s, {"action": "verify.*"}, zone=ZONE),
}


def _seeded(tmp_path: Path) -> Path:
    database = tmp_path / "catalog.db"
    url = f"sqlite:///{database}"
    seed.current_schema(url)
    audit = seed.audit_log(tmp_path)
    catalog = Catalog.open(url)
    try:
        with catalog.transaction() as db:
            zhang = seed.officer(db, "000123", "张三")
            camera = seed.camera(db, "ZFY0001", assigned=zhang, first_seen_at=NOW - timedelta(days=9))
            stored = seed.stored_object(db, seed.payload("a"), stored_at=NOW - timedelta(days=1))
            recording = seed.recording(
                db,
                camera,
                stored,
                recorded_at=NOW - timedelta(days=2),
                ingested_at=NOW - timedelta(days=1),
                audit=audit,
            )
            records.open_dock_session(db, "usb-1-1", NOW)
            db.add(Flag(kind=FlagKind.LATE, dedup_key="late:1", raised_at=NOW, recording_id=recording.id))
            outcome = VerifyOutcome(clean=True, events_checked=1, objects_checked=1, problems=0, objects=True)
            record_outcome(db, audit, AUDITOR, outcome, NOW)
    finally:
        catalog.close()
    return database


def test_every_query_answers_on_a_catalog_opened_read_only(tmp_path: Path) -> None:
    database = _seeded(tmp_path)
    database.chmod(0o444)
    before = database.read_bytes()
    catalog = Catalog.open(f"sqlite:///{database}", read_only=True)
    try:
        with catalog.transaction() as db:
            answers = {name: call(db) for name, call in CALLS.items()}
    finally:
        catalog.close()
    assert database.read_bytes() == before
    assert answers["last_verify"]["by"] == "wang.auditor"
    assert answers["open_flag_counts"] == {"late": 1}
    assert [dock["port"] for dock in answers["docks"]] == ["usb-1-1"]
    assert answers["cameras"]["cameras"][0]["device_serial"] == "ZFY0001"
    assert answers["footage"]["count"] == 1
    assert [event["event_type"] for event in answers["audit_events"]["events"]] == ["verify.run"]


def test_every_public_query_is_covered_above() -> None:
    # A query added without a line in CALLS would go unchecked; one that writes would fail above.
    public = {
        name
        for name, function in inspect.getmembers(queries, inspect.isfunction)
        if function.__module__ == queries.__name__
        and not name.startswith("_")
        and next(iter(inspect.signature(function).parameters), None) == "db"
    }
    assert public == set(CALLS)
