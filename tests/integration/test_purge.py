"""The retention purge on real catalogs and a real FileObjectStore: what it may and may never remove,
dry run against real run, and the order audit event -> removal -> tombstone, including a failed removal."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ingestd import operations
from ingestd.eviction import ACTION as EVICT
from ingestd.eviction import ACTOR as EVICTION
from ingestd.policies.retention import KeepReason, RetentionRules
from ingestd.purge import _Run, gather, give_notices, purge
from store.audit import AuditLog
from store.catalog import Catalog
from store.models import Recording, RetentionClass, StoredObject
from store.objects import FileObjectStore
from store.signing import Signer
from tests.support import records as seed
from tests.support.objectstore import unseal_tree
from tests.support.records import CLERK

STORED = datetime(2025, 1, 10, 2, 0, tzinfo=UTC)
RULES = RetentionRules(routine_months=6, standard_years=3, notice_days=14)
NOTICE_AT = datetime(2025, 7, 1, 0, 0, tzinfo=UTC)  # expiry 2025-07-10 lies within 14 days: notice
PURGE_AT = datetime(2025, 7, 20, 0, 0, tzinfo=UTC)  # expired and noticed more than 14 days ago


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FileObjectStore]:
    yield FileObjectStore(
        tmp_path / "store", chunk_size=64 * 1024, fsync_interval=1024 * 1024
    ).create_directories()
    unseal_tree(tmp_path)  # sealed objects carry the immutable attribute where the filesystem allows


@pytest.fixture
def audit(tmp_path: Path) -> AuditLog:
    return seed.audit_log(tmp_path)


def populate(catalog: Catalog, store: FileObjectStore, audit: AuditLog) -> dict[str, int]:
    """Seven recordings stored on the same day, so only holds, classes, tags and sharing differ."""
    with catalog.transaction() as db:
        officer = seed.officer(db, "000123", "张三")
        camera = seed.camera(db, "ZFY0001", assigned=officer, first_seen_at=STORED)

        def add(name: str, data: bytes, **kwargs: Any) -> int:
            obj = seed.stored_object(db, data, stored_at=STORED, store=store)
            return seed.recording(
                db, camera, obj, recorded_at=STORED - timedelta(hours=3), ingested_at=STORED, **kwargs
            ).id

        shared = seed.payload("shared")
        ids = {
            "plain": add("plain", seed.payload("plain")),
            "held": add("held", seed.payload("held")),
            "long_term": add("long_term", seed.payload("lt"), retention_class=RetentionClass.LONG_TERM),
            "evidence": add("evidence", seed.payload("ev"), tags=["evidence"]),
            "standard": add("standard", seed.payload("std"), retention_class=RetentionClass.STANDARD),
            "shared_expired": add("shared_expired", shared),
            "shared_needed": add("shared_needed", shared, retention_class=RetentionClass.STANDARD),
        }
    with catalog.transaction() as db:
        operations.hold(
            db, audit, actor=CLERK, now=STORED, reason="complaint pending", recording_ids=[ids["held"]]
        )
    return ids


def digest_of(catalog: Catalog, recording_id: int) -> str:
    with catalog.transaction() as db:
        return db.get_one(Recording, recording_id).blake3


def test_purge_removes_only_expired_noticed_unshared_footage(
    catalog: Catalog, store: FileObjectStore, audit: AuditLog
) -> None:
    ids = populate(catalog, store, audit)
    digests = {name: digest_of(catalog, rid) for name, rid in ids.items()}

    # Before expiry minus the notice period nothing happens at all.
    early = purge(
        catalog, store, audit, actor=CLERK, now=NOTICE_AT - timedelta(days=30), rules=RULES, dry_run=False
    )
    assert (early.noticed, early.purged_recordings, early.removed_objects) == ((), (), ())

    noticed = purge(catalog, store, audit, actor=CLERK, now=NOTICE_AT, rules=RULES, dry_run=False)
    assert set(noticed.noticed) == {ids["plain"], ids["shared_expired"]}
    assert noticed.removed_objects == ()  # a notice comes first, deletion only notice_days later

    report = purge(catalog, store, audit, actor=CLERK, now=PURGE_AT, rules=RULES, dry_run=False)
    assert report.ok
    assert report.purged_recordings == tuple(sorted([ids["plain"], ids["shared_expired"]]))
    assert report.removed_objects == (digests["plain"],)
    kept = {k.recording_id: k.reason for k in report.plan.kept}
    assert kept[ids["held"]] is KeepReason.HELD
    assert kept[ids["long_term"]] is KeepReason.LONG_TERM
    assert kept[ids["evidence"]] is KeepReason.LONG_TERM
    assert [(k.blake3, k.referenced_by) for k in report.plan.kept_objects] == [
        (digests["shared_expired"], (ids["shared_needed"],))
    ]

    assert not store.exists(digests["plain"])
    for name in ("held", "long_term", "evidence", "standard", "shared_expired"):
        assert store.exists(digests[name]), name
    with catalog.transaction() as db:
        rows = {r.id: r for r in db.scalars(select(Recording)).all()}
        assert rows[ids["plain"]].purged_at == PURGE_AT  # a tombstone, still readable
        assert rows[ids["shared_expired"]].purged_at == PURGE_AT
        assert rows[ids["shared_needed"]].purged_at is None
        assert db.get_one(StoredObject, digests["plain"]).removed_at == PURGE_AT
        assert db.get_one(StoredObject, digests["shared_expired"]).removed_at is None

    # Running again at the same instant changes nothing more.
    again = purge(catalog, store, audit, actor=CLERK, now=PURGE_AT, rules=RULES, dry_run=False)
    assert (again.noticed, again.purged_recordings, again.removed_objects) == ((), (), ())


def test_a_shared_object_goes_when_its_last_live_recording_does(
    catalog: Catalog, store: FileObjectStore, audit: AuditLog
) -> None:
    ids = populate(catalog, store, audit)
    shared = digest_of(catalog, ids["shared_needed"])
    purge(catalog, store, audit, actor=CLERK, now=NOTICE_AT, rules=RULES, dry_run=False)
    purge(catalog, store, audit, actor=CLERK, now=PURGE_AT, rules=RULES, dry_run=False)
    three_years = datetime(2028, 1, 1, tzinfo=UTC)
    purge(catalog, store, audit, actor=CLERK, now=three_years, rules=RULES, dry_run=False)
    final = purge(
        catalog, store, audit, actor=CLERK, now=three_years + timedelta(days=15), rules=RULES, dry_run=False
    )
    # The tombstoned recording no longer counts as a reference: the standard one was the last.
    assert shared in final.removed_objects
    assert not store.exists(shared)
    assert store.exists(digest_of(catalog, ids["held"]))
    assert store.exists(digest_of(catalog, ids["evidence"]))


def test_dry_run_equals_the_real_run_and_changes_nothing(
    catalog: Catalog, store: FileObjectStore, audit: AuditLog
) -> None:
    ids = populate(catalog, store, audit)
    give_notices(catalog, audit, actor=CLERK, now=NOTICE_AT, rules=RULES)
    with catalog.transaction() as db:
        events_before = len(seed.audit_events(db))
    dry = purge(catalog, store, audit, actor=CLERK, now=PURGE_AT, rules=RULES, dry_run=True)
    with catalog.transaction() as db:
        assert len(seed.audit_events(db)) == events_before
        assert all(r.purged_at is None for r in db.scalars(select(Recording)).all())
    assert store.exists(digest_of(catalog, ids["plain"]))

    real = purge(catalog, store, audit, actor=CLERK, now=PURGE_AT, rules=RULES, dry_run=False)
    assert dry.plan == real.plan
    assert dry.pending_objects == real.pending_objects
    assert real.purged_recordings == dry.plan.deletable_recordings
    assert real.removed_objects == dry.plan.deletable_objects
    assert dry.as_json()["deletable_objects"] == real.as_json()["deletable_objects"]


class ObservingStore(FileObjectStore):
    """A real FileObjectStore that records, at the moment of each removal, what another process would
    see: whether the bytes are still there and which purge events are already committed."""

    catalog: Catalog
    seen: list[tuple[bool, list[str]]]

    def remove(self, blake3_hex: str) -> None:
        with self.catalog.transaction() as db:
            started = [
                e.outcome
                for e in seed.audit_events(db, "retention.purge")
                if e.subject == f"object:{blake3_hex}"
            ]
        self.seen.append((self.exists(blake3_hex), started))
        super().remove(blake3_hex)


def test_the_audit_event_is_committed_before_the_object_goes(
    catalog: Catalog, tmp_path: Path, audit: AuditLog
) -> None:
    store = ObservingStore(tmp_path / "observed", chunk_size=64 * 1024).create_directories()
    # Another process reads, as ingestctl does: the purge holds the object row's lock while it removes.
    url = catalog.engine.url.render_as_string(hide_password=False)
    store.catalog, store.seen = Catalog.open(url, read_only=True), []
    ids = populate(catalog, store, audit)
    digest = digest_of(catalog, ids["plain"])
    purge(catalog, store, audit, actor=CLERK, now=NOTICE_AT, rules=RULES, dry_run=False)
    purge(catalog, store, audit, actor=CLERK, now=PURGE_AT, rules=RULES, dry_run=False)
    assert store.seen == [(True, ["started"])]
    assert not store.exists(digest)
    with catalog.transaction() as db:
        removal = [e for e in seed.audit_events(db) if e.subject == f"object:{digest}"]
    assert [(e.action, e.outcome, e.actor_user) for e in removal] == [
        ("retention.purge", "started", "li.clerk"),
        ("retention.remove", "ok", "li.clerk"),
    ]
    assert removal[0].details["recordings"] == [ids["plain"]]
    assert removal[0].seq < removal[1].seq
    store.catalog.close()
    unseal_tree(tmp_path)


def chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


@pytest.mark.root
def test_a_failing_removal_leaves_the_audit_event_and_a_consistent_catalog_and_is_retried(
    catalog: Catalog, store: FileObjectStore, audit: AuditLog
) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("needs chattr")
    ids = populate(catalog, store, audit)
    digest = digest_of(catalog, ids["plain"])
    directory = store.path_for(digest).parent
    purge(catalog, store, audit, actor=CLERK, now=NOTICE_AT, rules=RULES, dry_run=False)
    try:
        chattr("+i", directory)  # even root cannot unlink from an immutable directory
    except subprocess.CalledProcessError:
        pytest.skip("the filesystem under tmp_path has no immutable attribute")
    try:
        failed = purge(catalog, store, audit, actor=CLERK, now=PURGE_AT, rules=RULES, dry_run=False)
    finally:
        chattr("-i", directory)
    assert not failed.ok
    assert digest in failed.failed_objects
    assert store.exists(digest)
    with catalog.transaction() as db:
        outcomes = [(e.action, e.outcome) for e in seed.audit_events(db) if e.subject == f"object:{digest}"]
        # The recordings are tombstones (no hold can be placed any more), the object row is not marked
        # removed because its bytes are still there: no row points at missing bytes.
        assert db.get_one(Recording, ids["plain"]).purged_at == PURGE_AT
        assert db.get_one(StoredObject, digest).removed_at is None
        _plan, pending = gather(db, RULES, PURGE_AT)
    assert outcomes == [("retention.purge", "started"), ("retention.remove", "failed")]
    assert pending == (digest,)

    retried = purge(
        catalog, store, audit, actor=CLERK, now=PURGE_AT + timedelta(hours=1), rules=RULES, dry_run=False
    )
    assert retried.ok
    assert retried.removed_objects == (digest,)
    assert not store.exists(digest)
    with catalog.transaction() as db:
        assert db.get_one(StoredObject, digest).removed_at == PURGE_AT + timedelta(hours=1)


def test_a_purge_over_an_unmounted_store_fails_and_marks_nothing_removed(
    catalog: Catalog, store: FileObjectStore, audit: AuditLog, tmp_path: Path
) -> None:
    """The store's disk is not mounted: its root is an empty mount point. Opening the store there creates
    nothing, and each removal fails, audited, instead of recording bytes out of reach as already gone."""
    ids = populate(catalog, store, audit)
    digest = digest_of(catalog, ids["plain"])
    purge(catalog, store, audit, actor=CLERK, now=NOTICE_AT, rules=RULES, dry_run=False)
    mount_point = tmp_path / "unmounted"
    mount_point.mkdir()
    failed = purge(
        catalog, FileObjectStore(mount_point), audit, actor=CLERK, now=PURGE_AT, rules=RULES, dry_run=False
    )
    assert not failed.ok
    assert digest in failed.failed_objects
    assert "is not set up" in failed.failed_objects[digest]
    assert list(mount_point.iterdir()) == []
    assert store.exists(digest)
    with catalog.transaction() as db:
        assert db.get_one(StoredObject, digest).removed_at is None
        outcomes = [(e.action, e.outcome) for e in seed.audit_events(db) if e.subject == f"object:{digest}"]
    assert outcomes == [("retention.purge", "started"), ("retention.remove", "failed")]


def test_a_hold_placed_after_the_notice_stops_the_purge_and_voids_the_notice(
    catalog: Catalog, store: FileObjectStore, audit: AuditLog
) -> None:
    ids = populate(catalog, store, audit)
    digest = digest_of(catalog, ids["plain"])
    purge(catalog, store, audit, actor=CLERK, now=NOTICE_AT, rules=RULES, dry_run=False)
    with catalog.transaction() as db:
        operations.hold(
            db,
            audit,
            actor=CLERK,
            now=NOTICE_AT + timedelta(days=1),
            reason="review",
            recording_ids=[ids["plain"]],
        )
        operations.release(
            db,
            audit,
            actor=CLERK,
            now=NOTICE_AT + timedelta(days=2),
            reason="done",
            recording_ids=[ids["plain"]],
        )
    report = purge(catalog, store, audit, actor=CLERK, now=PURGE_AT, rules=RULES, dry_run=False)
    # The notice given before the hold does not count: a fresh one now, deletion 14 days later.
    assert ids["plain"] in report.noticed
    assert ids["plain"] not in report.purged_recordings
    assert store.exists(digest)
    with catalog.transaction() as db:
        assert db.get_one(Recording, ids["plain"]).purge_notice_at == PURGE_AT
    later = purge(
        catalog, store, audit, actor=CLERK, now=PURGE_AT + timedelta(days=14), rules=RULES, dry_run=False
    )
    assert later.removed_objects == (digest,)
    # A tombstone cannot be held: the purge's intent was on record before the bytes went.
    with pytest.raises(operations.RefusedError, match="were purged"), catalog.transaction() as db:
        operations.hold(db, audit, actor=CLERK, now=PURGE_AT, reason="late", recording_ids=[ids["plain"]])


def test_verify_is_clean_after_a_purge(tmp_path: Path) -> None:
    from ingestd.config import Config  # noqa: PLC0415 - only this test needs whole services
    from ingestd.services import Services  # noqa: PLC0415
    from ingestd.verify import verify_all  # noqa: PLC0415

    config = Config.model_validate(
        {
            "daemon": {"state_dir": str(tmp_path / "state")},
            "catalog": {"url": f"sqlite:///{tmp_path / 'catalog.db'}"},
            "store": {"root": str(tmp_path / "store")},
        }
    )
    seed.current_schema(config.catalog.url)
    (tmp_path / "state").mkdir()
    Signer.load_or_create(tmp_path / "state")  # the station exists: `migrate=False` opens, never creates
    FileObjectStore(tmp_path / "store").create_directories()
    services = Services.open(config, migrate=False)
    try:
        with services.catalog.transaction() as db:
            camera = seed.camera(db, "ZFY0003", assigned=None, first_seen_at=STORED)
            obj = seed.stored_object(db, seed.payload("verify"), stored_at=STORED, store=services.store)
            seed.recording(db, camera, obj, recorded_at=STORED, ingested_at=STORED, audit=services.audit)
        for now in (NOTICE_AT, PURGE_AT):
            purge(
                services.catalog,
                services.store,
                services.audit,
                actor=CLERK,
                now=now,
                rules=config.retention.rules(),
                dry_run=False,
            )
        assert not services.store.exists(obj.blake3)
        report = verify_all(services, objects=True)
        assert report.clean, report.problems
        assert report.objects_checked == 0
    finally:
        services.close()
        unseal_tree(tmp_path)


def test_the_removal_keeps_an_object_that_a_new_recording_took_after_the_tombstone(
    catalog: Catalog, store: FileObjectStore, audit: AuditLog
) -> None:
    """An ingest that deduplicates into an object commits its recording between the purge's tombstone
    step and its removal step: the removal, under the object row's lock, sees the live recording and
    leaves the bytes, so no live row points at missing bytes."""
    ids = populate(catalog, store, audit)
    digest = digest_of(catalog, ids["plain"])
    purge(catalog, store, audit, actor=CLERK, now=NOTICE_AT, rules=RULES, dry_run=False)
    run = _Run(catalog, store, audit, CLERK, PURGE_AT, RULES)
    assert run.tombstone([ids["plain"]], digest)
    with catalog.transaction() as db:  # the ingest that raced in
        camera = db.get_one(Recording, ids["plain"]).camera
        obj = db.get_one(StoredObject, digest)
        newcomer = seed.recording(
            db, camera, obj, recorded_at=PURGE_AT - timedelta(hours=3), ingested_at=PURGE_AT
        ).id
    assert not run.remove(digest)
    assert store.exists(digest)
    assert store.verify_object(digest, obj.sha256, obj.size) == []
    with catalog.transaction() as db:
        assert db.get_one(StoredObject, digest).removed_at is None
        assert db.get_one(Recording, newcomer).purged_at is None
        (event,) = [e for e in seed.audit_events(db, "retention.remove") if e.subject == f"object:{digest}"]
    assert event.outcome == "skipped"
    assert event.details["referenced_by"] == [newcomer]
    assert run.skipped[f"object:{digest}"].startswith("object is now referenced by recording")


def test_a_purge_after_a_cut_eviction_removes_the_local_bytes(
    catalog: Catalog, store: FileObjectStore, audit: AuditLog
) -> None:
    """An eviction committed its intent and a crash cut it before the bytes went: the object is marked
    evicted but still local. Its retention purge removes the bytes, not leaves them past retention."""
    ids = populate(catalog, store, audit)
    digest = digest_of(catalog, ids["plain"])
    cut_at = STORED + timedelta(days=30)
    with catalog.transaction() as db:
        audit.append(db, actor=EVICTION, action=EVICT, subject=f"object:{digest}", at=cut_at, details={})
        db.get_one(StoredObject, digest).evicted_at = cut_at
    purge(catalog, store, audit, actor=CLERK, now=NOTICE_AT, rules=RULES, dry_run=False)
    report = purge(catalog, store, audit, actor=CLERK, now=PURGE_AT, rules=RULES, dry_run=False)
    assert report.removed_objects == (digest,)
    assert not store.exists(digest)
    with catalog.transaction() as db:
        [event] = seed.audit_events(db, "retention.remove")
        assert (event.outcome, event.details["detail"]) == ("ok", "removed")
        assert db.get_one(StoredObject, digest).removed_at == PURGE_AT
