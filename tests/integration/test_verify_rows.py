"""Custody-relevant catalog rows against their audit events, on SQLite and PostgreSQL: rows edited,
inserted or deleted with raw SQL (as someone with catalog access but not the key would) are named."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select, text, update

from ingestd import operations
from ingestd.config import RetentionConfig
from ingestd.eviction import ACTION as EVICT
from ingestd.eviction import ACTOR as EVICTION
from ingestd.evidence.approvals import NewApproval, create_approval, revoke_approval
from ingestd.verify_rows import RowProblem, verify_rows
from store.audit import Actor, Role
from store.catalog import Catalog
from store.models import Camera, Confidentiality, Recording, StoredObject
from tests.support import records as seed
from tests.support.records import CLERK

NOW = datetime(2026, 3, 2, 9, 0, 0, 123456, tzinfo=UTC)
APPROVER = Actor(user="wang.approver", uid=1002, role=Role.APPROVER, source="ctl:uid=1002")


def build(catalog: Catalog, tmp_path: Path) -> None:
    audit = seed.audit_log(tmp_path)
    with catalog.transaction() as db:
        officer = seed.officer(db, "000123", "张三")
        camera = seed.camera(db, "ZFY0001", assigned=officer, first_seen_at=NOW)
        for n in range(2):
            obj = seed.stored_object(db, seed.payload(f"r{n}"), stored_at=NOW)
            seed.recording(db, camera, obj, recorded_at=NOW, ingested_at=NOW, audit=audit)
        operations.tag(
            db,
            audit,
            actor=CLERK,
            now=NOW,
            retention=RetentionConfig(),
            recording_ids=[1],
            add_tags=["evidence"],
            case_id="A-7",
            confidentiality=Confidentiality.PRIVACY,
        )
        operations.checkout(db, audit, actor=CLERK, now=NOW, device_serial="ZFY0001")
        new = NewApproval(
            purpose="court",
            expires_at=NOW + timedelta(days=7),
            recording_ids=(1,),
            case_id=None,
            allows_confidential=False,
            requested_by=None,
            grantee="zhao.clerk",
        )
        approval = create_approval(db, audit, APPROVER, new, now=NOW)
        revoke_approval(db, audit, APPROVER, approval.id, reason="withdrawn", now=NOW + timedelta(hours=1))


def check(catalog: Catalog) -> list[tuple[str, str]]:
    with catalog.transaction() as db:
        found: list[RowProblem] = verify_rows(db)
    return [(p.kind, p.subject) for p in found]


def tamper(catalog: Catalog, sql: str) -> None:
    with catalog.engine.begin() as connection:
        connection.execute(text(sql))


def test_rows_that_agree_with_their_events_verify(catalog: Catalog, tmp_path: Path) -> None:
    build(catalog, tmp_path)
    assert check(catalog) == []


def test_each_row_edited_behind_the_chain_is_named(catalog: Catalog, tmp_path: Path) -> None:
    build(catalog, tmp_path)
    tamper(catalog, "UPDATE recordings SET retention_class = 'routine' WHERE id = 1")
    tamper(catalog, "UPDATE recordings SET legal_hold = true WHERE id = 2")
    tamper(catalog, "UPDATE approvals SET revoked_at = NULL")
    tamper(catalog, "DELETE FROM custody_events")
    tamper(catalog, "UPDATE recordings SET confidentiality = 'normal', case_id = NULL WHERE id = 1")
    assert check(catalog) == [
        ("row-mismatch", "recording:1"),
        ("row-mismatch", "recording:1"),
        ("row-mismatch", "recording:1"),
        ("row-mismatch", "recording:2"),
        ("row-mismatch", "approval:1"),
        ("row-missing", "camera:ZFY0001"),
    ]


def test_rows_with_no_event_and_events_with_no_row_are_named(catalog: Catalog, tmp_path: Path) -> None:
    build(catalog, tmp_path)
    tamper(catalog, "DELETE FROM approvals")
    with catalog.transaction() as db:
        camera = seed.camera(db, "ZFY0002", assigned=None, first_seen_at=NOW)
        obj = seed.stored_object(db, seed.payload("smuggled"), stored_at=NOW)
        seed.recording(db, camera, obj, recorded_at=NOW, ingested_at=NOW)  # no recording.ingest event
    assert check(catalog) == [("row-unaudited", "recording:3"), ("row-missing", "approval:1")]


def test_an_object_whose_recorded_seal_was_edited_is_named(catalog: Catalog, tmp_path: Path) -> None:
    # `verify` checks each object against the seal the catalog recorded: weakening it (immutable to
    # read-only) would make a missing immutable attribute pass unnoticed.
    build(catalog, tmp_path)
    with catalog.engine.begin() as connection:
        blake3 = connection.execute(select(Recording.blake3).where(Recording.id == 2)).scalar_one()
        connection.execute(
            text(
                "UPDATE stored_objects SET seal = CASE WHEN seal = 'immutable' THEN 'read-only'"
                " ELSE 'immutable' END WHERE blake3 = :blake3"
            ),
            {"blake3": blake3},
        )
    with catalog.transaction() as db:
        found = [(p.kind, p.subject, p.detail.split(" ")[0]) for p in verify_rows(db)]
    assert found == [("row-mismatch", f"object:{blake3}", "seal")]


def test_a_recording_pointed_at_other_bytes_backdated_or_noticed_behind_the_chain_is_named(
    catalog: Catalog, tmp_path: Path
) -> None:
    build(catalog, tmp_path)
    with catalog.engine.begin() as connection:
        other = connection.execute(select(Recording.blake3, Recording.sha256).where(Recording.id == 2)).one()
        connection.execute(
            update(Recording).where(Recording.id == 1).values(blake3=other.blake3, sha256=other.sha256)
        )
        early = NOW - timedelta(days=400)
        connection.execute(
            update(Recording).where(Recording.id == 2).values(purge_notice_at=early, ingested_at=early)
        )
    with catalog.transaction() as db:
        found = [(p.kind, p.subject, p.detail.split(" ")[0]) for p in verify_rows(db)]
    assert found == [
        ("row-mismatch", "recording:1", "blake3"),
        ("row-mismatch", "recording:1", "sha256"),
        ("row-mismatch", "recording:2", "purge_notice_at"),
        ("row-mismatch", "recording:2", "ingested_at"),
    ]


def test_unreadable_values_are_problems_not_a_crash(sqlite_catalog: Catalog, tmp_path: Path) -> None:
    build(sqlite_catalog, tmp_path)
    tamper(sqlite_catalog, "UPDATE audit_events SET details = '{' WHERE action = 'recording.classify'")
    tamper(sqlite_catalog, "UPDATE audit_events SET details = '[1]' WHERE action = 'approval.create'")
    tamper(sqlite_catalog, "UPDATE custody_events SET at = 'yesterday'")
    found = check(sqlite_catalog)
    assert ("row-unreadable", "custody_events") in found, found
    assert [kind for kind, subject in found if subject.startswith("seq ")] == ["row-unreadable"] * 2, found


def test_an_eviction_time_undone_by_an_ingest_and_written_back_is_reported(
    catalog: Catalog, tmp_path: Path
) -> None:
    """A past eviction's time is on record; an ingest of the same bytes made the object local again.
    Writing that old time back (so the next eviction run would remove the bytes) is named."""
    build(catalog, tmp_path)
    audit = seed.audit_log(tmp_path)
    evicted = NOW + timedelta(days=1)
    with catalog.transaction() as db:
        obj = db.scalars(select(StoredObject).order_by(StoredObject.stored_at, StoredObject.blake3)).first()
        assert obj is not None
        digest = obj.blake3
        audit.append(db, actor=EVICTION, action=EVICT, subject=f"object:{digest}", at=evicted, details={})
        obj.evicted_at = evicted
    assert check(catalog) == []  # an eviction on record
    with catalog.transaction() as db:
        obj = db.get_one(StoredObject, digest)
        camera = db.scalars(select(Camera)).one()
        seed.recording(db, camera, obj, recorded_at=NOW, ingested_at=evicted + timedelta(days=1), audit=audit)
        obj.evicted_at = None  # the same bytes came back from a camera
    assert check(catalog) == []
    with catalog.transaction() as db:
        db.execute(update(StoredObject).where(StoredObject.blake3 == digest).values(evicted_at=evicted))
    assert check(catalog) == [("row-mismatch", f"object:{digest}")]
