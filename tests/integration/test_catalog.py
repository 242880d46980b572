"""The catalog on real SQLite files and a real PostgreSQL server: UTC times, constraints, SQLite settings,
and the status query that leans on its indexes."""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy.exc
from sqlalchemy import event, select, text

import store.catalog
from ingestd import records
from ingestd.control import queries
from store.catalog import Catalog
from store.models import (
    Camera,
    Confidentiality,
    CustodyEvent,
    CustodyKind,
    Officer,
    Recording,
    RetentionClass,
    StoredObject,
    Unit,
)
from store.objects import Seal
from store.times import NaiveDatetimeError
from tests.support import records as seed

SHANGHAI = timezone(timedelta(hours=8))
CATALOG_PY = store.catalog.__file__


def seed_recording(catalog: Catalog, recorded_at: datetime) -> int:
    with catalog.transaction() as db:
        unit = Unit(unit_no="110105000000", name="朝阳分局")
        officer = Officer(officer_no="000123", name="张三", unit=unit)
        camera = Camera(
            device_serial="ZFY0001",
            driver="serial",
            unit=unit,
            assigned_officer=officer,
            first_seen_at=recorded_at,
        )
        stored = StoredObject(
            blake3="b" * 64, sha256="s" * 64, size=10, seal=Seal.IMMUTABLE, stored_at=recorded_at
        )
        recording = Recording(
            camera=camera,
            officer=officer,
            unit_id=None,
            original_path="DCIM/100MEDIA/A.MP4",
            source_key="DCIM/100MEDIA/A.MP4:10",
            size=10,
            recorded_at_raw=recorded_at,
            recorded_at=recorded_at,
            recorded_at_source="mvhd",
            ingested_at=recorded_at,
            deadline_at=recorded_at + timedelta(hours=24),
            stored_object=stored,
            sha256="s" * 64,
            retention_class=RetentionClass.ROUTINE,
            confidentiality=Confidentiality.NORMAL,
        )
        db.add(recording)
        db.flush()
        return recording.id


def test_times_come_back_as_aware_utc_on_every_backend(catalog: Catalog) -> None:
    local = datetime(2026, 11, 22, 8, 30, 15, 123456, tzinfo=SHANGHAI)
    recording_id = seed_recording(catalog, local)
    with catalog.transaction() as db:
        recording = db.get_one(Recording, recording_id)
        db.expire_all()
        recording = db.get_one(Recording, recording_id)
        assert recording.recorded_at.tzinfo is UTC
        assert recording.recorded_at == local
        assert recording.recorded_at.hour == 0  # 08:30 in Shanghai is 00:30 UTC
        assert recording.recorded_at.microsecond == 123456


def test_time_ordering_in_sql_is_by_instant_not_by_local_text(catalog: Catalog) -> None:
    early = datetime(2026, 11, 22, 9, 0, tzinfo=SHANGHAI)  # 01:00 UTC
    seed_recording(catalog, early)
    with catalog.transaction() as db:
        cutoff = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
        found = db.scalars(select(Recording.id).where(Recording.recorded_at < cutoff)).all()
        assert len(found) == 1


def test_naive_datetime_is_refused(catalog: Catalog) -> None:
    with pytest.raises(sqlalchemy.exc.StatementError) as caught, catalog.transaction() as db:
        db.add(Unit(unit_no="1", name="x"))
        db.add(Camera(device_serial="ZFY0002", driver="serial", first_seen_at=datetime(2026, 1, 1)))  # noqa: DTZ001 - the point of the test
        db.flush()
    assert isinstance(caught.value.orig, NaiveDatetimeError)
    with catalog.transaction() as db:
        assert db.scalars(select(Unit)).all() == []  # the whole transaction rolled back


def test_foreign_keys_are_enforced(catalog: Catalog) -> None:
    now = datetime.now(UTC)
    with pytest.raises(sqlalchemy.exc.IntegrityError), catalog.transaction() as db:
        db.add(Camera(device_serial="ZFY0003", driver="serial", unit_id=999, first_seen_at=now))
        db.flush()


def test_a_recording_is_ingested_once_per_camera_and_source(catalog: Catalog) -> None:
    now = datetime.now(UTC)
    recording_id = seed_recording(catalog, now)
    with pytest.raises(sqlalchemy.exc.IntegrityError), catalog.transaction() as db:
        original = db.get_one(Recording, recording_id)
        db.add(
            Recording(
                camera_id=original.camera_id,
                original_path=original.original_path,
                source_key=original.source_key,
                size=10,
                recorded_at_raw=now,
                recorded_at=now,
                recorded_at_source="mtime",
                ingested_at=now,
                deadline_at=now,
                blake3=original.blake3,
                sha256=original.sha256,
                retention_class=RetentionClass.ROUTINE,
                confidentiality=Confidentiality.NORMAL,
            )
        )
        db.flush()


def test_sqlite_runs_in_wal_with_busy_timeout_and_foreign_keys(sqlite_catalog: Catalog) -> None:
    with sqlite_catalog.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 10_000
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert connection.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL


def test_sqlite_writers_queue_instead_of_failing(sqlite_catalog: Catalog) -> None:
    """Two sessions that read and then write must both succeed: BEGIN IMMEDIATE serialises them."""
    url = sqlite_catalog.engine.url.render_as_string()
    other = Catalog.open(url)
    try:
        now = datetime.now(UTC)
        with sqlite_catalog.transaction() as first:
            first.scalars(select(Unit)).all()
            first.add(Unit(unit_no="A", name="a"))
        with other.transaction() as second:
            second.scalars(select(Unit)).all()
            second.add(Camera(device_serial="ZFY0004", driver="serial", first_seen_at=now))
        with sqlite_catalog.transaction() as check:
            assert check.scalar(select(Camera.device_serial)) == "ZFY0004"
    finally:
        other.close()


def test_sqlite_writers_of_one_process_wait_their_turn_outside_sqlite(sqlite_catalog: Catalog) -> None:
    """A second writer of the same catalog waits on the catalog's own lock, not in SQLite's busy handler
    (which polls with sleeps of up to 100 ms, so that under many docks one waiter starved): it takes no
    connection until the first transaction ends, then commits."""
    checked_out: list[int] = []
    event.listen(sqlite_catalog.engine, "checkout", lambda *_: checked_out.append(threading.get_ident()))
    second_done = threading.Event()

    def second_writer() -> None:
        with sqlite_catalog.transaction() as db:
            db.add(Unit(unit_no="B", name="b"))
        second_done.set()

    with sqlite_catalog.transaction() as first:
        first.add(Unit(unit_no="A", name="a"))
        first.flush()  # holds SQLite's write lock from here
        writer = threading.Thread(target=second_writer)
        writer.start()
        assert writer.ident is not None
        while writer.ident not in checked_out:
            frame = sys._current_frames().get(writer.ident)
            if (
                frame is not None
                and frame.f_code.co_name == "transaction"
                and frame.f_code.co_filename == CATALOG_PY
            ):
                break  # blocked inside `transaction` itself, on the lock (a C call)
            writer.join(0.01)
        assert writer.ident not in checked_out
        assert not second_done.is_set()
    writer.join()
    assert second_done.is_set()
    with sqlite_catalog.transaction() as check:
        assert sorted(check.scalars(select(Unit.unit_no))) == ["A", "B"]


def test_each_dock_shows_the_camera_and_officer_of_its_latest_session(catalog: Catalog) -> None:
    """`docks` finds each dock's latest session by a per-dock seek (ix_dock_sessions_dock): older sessions
    of the same dock, and the sessions of other docks, never show through."""
    now = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    with catalog.transaction() as db:
        officers = [seed.officer(db, f"00012{n}", f"警员{n}") for n in range(3)]
        cameras = [seed.camera(db, f"ZFY000{n}", assigned=officers[n], first_seen_at=now) for n in range(3)]
        # usb-1-1: cameras 0 then 1 (latest); usb-1-2: camera 2, opened between them.
        for port, camera, at in (("usb-1-1", 0, 1), ("usb-1-2", 2, 2), ("usb-1-1", 1, 3)):
            dock_session = records.open_dock_session(db, port, now + timedelta(minutes=at))
            dock_session.camera_id = cameras[camera].id
            db.add(
                CustodyEvent(
                    camera_id=cameras[camera].id,
                    officer_id=officers[camera].id,
                    kind=CustodyKind.CHECK_IN,
                    at=now + timedelta(minutes=at),
                    actor="ingestd",
                    actor_role="daemon",
                    dock_session_id=dock_session.id,
                )
            )
    with catalog.transaction() as db:
        shown = {d["port"]: (d["device_serial"], d["officer_name"]) for d in queries.docks(db)}
    assert shown == {"usb-1-1": ("ZFY0001", "警员1"), "usb-1-2": ("ZFY0002", "警员2")}
