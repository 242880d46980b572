"""The replication queue (SQLite and PostgreSQL) and the replicator against a real single-node Ceph.

What the vault holds is asked of the server through a plain boto3 client with the station's own
credentials; radosgw and `ingestd replicate` are killed for real (SIGKILL by their own pid).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy.exc
from botocore.exceptions import ClientError
from sqlalchemy import select, text

from drivers.mp4 import write_mp4
from ingestd import audit_anchor, jobs, operations, replication, schema
from ingestd.config import Config, NotifyConfig
from ingestd.control import metrics, queries
from ingestd.flagging import FlagNotifier
from ingestd.importer import run_import
from ingestd.policies.retention import RetentionRules, add_months
from ingestd.replicator import Replicator
from ingestd.services import Services
from ingestd.session import IngestSettings
from store.audit import Role
from store.catalog import Catalog
from store.models import (
    AuditEvent,
    Flag,
    FlagKind,
    Recording,
    ReplicationItem,
    ReplicationKind,
    ReplicationState,
    RetentionClass,
    StoredObject,
)
from store.vault import COMPLIANCE, S3_MIN_PART_SIZE, Vault, VaultSettings, object_key
from tests.support import records as seed
from tests.support.audit import rewrite_chain
from tests.support.ceph import CephCluster, free_port
from tests.support.evidence import APPROVER
from tests.support.objectstore import unseal_tree

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
SILENT_NOTIFIER = FlagNotifier(NotifyConfig())  # no command: flags are raised, nothing is run
PART_MIB = S3_MIN_PART_SIZE // (1024 * 1024)


# -- the queue, on both catalog backends ----------------------------------------------------------


def test_enqueue_is_idempotent_and_backfill_queues_only_live_unqueued_objects(catalog: Catalog) -> None:
    with catalog.transaction() as db:
        first = seed.stored_object(db, seed.payload("a"), stored_at=NOW)
        second = seed.stored_object(db, seed.payload("b"), stored_at=NOW + timedelta(seconds=1))
        gone = seed.stored_object(db, seed.payload("c"), stored_at=NOW)
        gone.removed_at = NOW
        assert replication.enqueue_object(db, blake3=first.blake3, size=first.size, now=NOW) is True
        assert replication.enqueue_object(db, blake3=first.blake3, size=first.size, now=NOW) is False
    with catalog.transaction() as db:
        assert replication.backfill(db, NOW) == 1
        assert replication.backfill(db, NOW) == 0
    with catalog.transaction() as db:
        rows = db.scalars(select(ReplicationItem).order_by(ReplicationItem.id)).all()
        assert [(r.subject, r.state, r.attempts, r.parts) for r in rows] == [
            (first.blake3, ReplicationState.PENDING, 0, []),
            (second.blake3, ReplicationState.PENDING, 0, []),
        ]
        assert all(r.kind is ReplicationKind.OBJECT for r in rows)


def test_due_skips_items_backing_off_and_the_summary_counts_states(catalog: Catalog) -> None:
    with catalog.transaction() as db:
        for name in ("a", "b", "c"):
            row = seed.stored_object(db, seed.payload(name), stored_at=NOW)
            replication.enqueue_object(db, blake3=row.blake3, size=row.size, now=NOW)
        a, b, c = db.scalars(select(ReplicationItem).order_by(ReplicationItem.id)).all()
        b.state, b.attempts, b.last_error = ReplicationState.FAILED, 3, "vault endpoint is unreachable"
        b.next_attempt_at = NOW + replication.backoff(3, timedelta(seconds=30))
        c.state, c.replicated_at = ReplicationState.REPLICATED, NOW
    assert replication.backoff(3, timedelta(seconds=30)) == timedelta(minutes=2)
    assert replication.backoff(30, timedelta(seconds=30)) == replication.MAX_BACKOFF
    with catalog.transaction() as db:
        assert [i.id for i in replication.due(db, NOW, limit=10)] == [a.id]
        assert [i.id for i in replication.due(db, NOW, limit=10, ignore_backoff=True)] == [a.id, b.id]
        assert [i.id for i in replication.due(db, NOW + timedelta(minutes=2), limit=10)] == [a.id, b.id]
        summary = replication.summary(db)
    assert summary.counts == {"pending": 1, "uploading": 0, "replicated": 1, "failed": 1}
    assert summary.oldest_pending_at == NOW
    assert summary.last_error == "vault endpoint is unreachable"
    assert summary.replicated_bytes == 4096


def test_the_job_raises_one_unreplicated_flag_per_object_past_the_deadline(catalog: Catalog) -> None:
    config = Config.model_validate({"vault": {"replication_deadline_hours": 24}})
    with catalog.transaction() as db:
        for name, queued in (("late", NOW - timedelta(hours=25)), ("fresh", NOW - timedelta(hours=2))):
            row = seed.stored_object(db, seed.payload(name), stored_at=queued)
            replication.enqueue_object(db, blake3=row.blake3, size=row.size, now=queued)
        late = seed.stored_object(db, seed.payload("late"), stored_at=NOW).blake3
    fresh = jobs.evaluate_unreplicated_objects(catalog, config, NOW, notifier=SILENT_NOTIFIER)
    assert [(flag.kind, flag.dedup_key) for flag in fresh] == [("unreplicated", f"unreplicated:{late}")]
    assert (
        jobs.evaluate_unreplicated_objects(
            catalog, config, NOW + timedelta(hours=1), notifier=SILENT_NOTIFIER
        )
        == []
    )
    with catalog.transaction() as db:
        assert db.scalars(select(Flag.kind)).all() == [FlagKind.UNREPLICATED]


def test_the_view_footage_and_metrics_show_the_queue_from_the_catalog(catalog: Catalog) -> None:
    with catalog.transaction() as db:
        officer = seed.officer(db, "000123", "张三")
        cam = seed.camera(db, "ZFY0001", assigned=officer, first_seen_at=NOW)
        digests = []
        for name, queued in (("a", NOW - timedelta(hours=3)), ("b", NOW - timedelta(hours=2)), ("c", NOW)):
            row = seed.stored_object(db, seed.payload(name, 7200), stored_at=queued)
            seed.recording(db, cam, row, recorded_at=queued, ingested_at=queued)
            replication.enqueue_object(db, blake3=row.blake3, size=row.size, now=queued)
            digests.append(row.blake3)
        a, b, _c = db.scalars(select(ReplicationItem).order_by(ReplicationItem.id)).all()
        a.state, a.replicated_at = ReplicationState.REPLICATED, NOW - timedelta(minutes=10)
        b.state, b.last_error = ReplicationState.FAILED, "vault endpoint is unreachable"
    with catalog.transaction() as db:
        shown = replication.view(db, enabled=True, bucket="evidence", endpoint="https://s3", now=NOW)
        listed = queries.footage(db, {}, zone=ZoneInfo("Asia/Shanghai"), role=Role.ADMIN)
        text = metrics.render(db, free_bytes=None, now=NOW)
    assert shown["counts"] == {"pending": 1, "uploading": 0, "replicated": 1, "failed": 1}
    assert shown["oldest_pending_age_s"] == 2 * 3600
    assert shown["bytes_per_s_last_hour"] == 7200 / 3600
    assert (shown["last_error"], shown["last_error_subject"]) == ("vault endpoint is unreachable", digests[1])
    assert (shown["bucket"], shown["enabled"]) == ("evidence", True)
    vault = {item["blake3"]: item["vault"] for item in listed["recordings"]}
    assert vault == {digests[0]: "replicated", digests[1]: "failed", digests[2]: "pending"}
    assert 'ingestd_replication_items{state="failed"} 1' in text
    assert "ingestd_replication_oldest_pending_age_seconds 7200" in text
    assert "ingestd_replication_bytes_per_second 2" in text


def test_the_migrated_schema_accepts_the_unreplicated_flag_and_still_refuses_unknown_kinds(
    empty_database_url: str,
) -> None:
    catalog = Catalog.open(empty_database_url)
    try:
        schema.upgrade(catalog.engine)
        with catalog.transaction() as db:
            db.add(Flag(kind=FlagKind.UNREPLICATED, dedup_key="unreplicated:x", raised_at=NOW, details={}))
        # A raw insert, past the ORM, as someone writing the catalog directly would.
        with (
            pytest.raises(sqlalchemy.exc.IntegrityError, match=r"(?i)check"),
            catalog.transaction() as db,
        ):
            db.execute(
                text(
                    "INSERT INTO flags (kind, status, dedup_key, raised_at, details) "
                    "VALUES ('made-up', 'open', 'k', :at, '{}')"
                ),
                {"at": NOW.replace(tzinfo=None)},
            )
    finally:
        catalog.close()


def test_the_wanted_lock_is_the_latest_date_and_a_hold_for_held_or_long_term(catalog: Catalog) -> None:
    rules = RetentionRules()
    with catalog.transaction() as db:
        officer = seed.officer(db, "000123", "张三")
        cam = seed.camera(db, "ZFY0001", assigned=officer, first_seen_at=NOW)
        obj = seed.stored_object(db, seed.payload("x"), stored_at=NOW)
        routine = seed.recording(db, cam, obj, recorded_at=NOW, ingested_at=NOW)
        lock = replication.wanted_lock_for(db, obj.blake3, rules)
        assert lock == replication.WantedLock(add_months(NOW, 6), legal_hold=False)
        assert replication.whole_second_after(NOW + timedelta(microseconds=1)) == NOW + timedelta(seconds=1)
        seed.recording(
            db, cam, obj, recorded_at=NOW, ingested_at=NOW, retention_class=RetentionClass.STANDARD
        )
        assert replication.wanted_lock_for(db, obj.blake3, rules).retain_until == add_months(NOW, 36)
        routine.legal_hold = True
        assert replication.wanted_lock_for(db, obj.blake3, rules).legal_hold is True
        routine.legal_hold = False
        routine.retention_tags = ["evidence"]  # long-term: held, dated as standard
        assert replication.wanted_lock_for(db, obj.blake3, rules) == replication.WantedLock(
            add_months(NOW, 36), legal_hold=True
        )


# -- the replicator against Ceph --------------------------------------------------------------------


@pytest.fixture(scope="module")
def bucket(ceph_cluster: CephCluster) -> str:
    return ceph_cluster.create_bucket(object_lock=True)


@pytest.fixture
def s3(ceph_cluster: CephCluster) -> S3Client:
    return ceph_cluster.client()


def secret_file(directory: Path, secret: str) -> Path:
    path = directory / "vault-secret"
    path.write_text(secret + "\n", encoding="ascii")
    path.chmod(0o600)
    return path


def station_config(tmp_path: Path, cluster: CephCluster, bucket: str, **vault: Any) -> dict[str, Any]:
    assert cluster.user is not None
    return {
        "daemon": {"state_dir": str(tmp_path / "state")},
        "catalog": {"url": f"sqlite:///{tmp_path / 'state' / 'catalog.db'}"},
        "store": {"root": str(tmp_path / "store")},
        "vault": {
            "enabled": True,
            "endpoint": cluster.endpoint,
            "bucket": bucket,
            "access_key_id": cluster.user.access_key_id,
            "secret_access_key_file": str(secret_file(tmp_path, cluster.user.secret_access_key)),
            "part_size_mib": PART_MIB,
            "retry_initial_seconds": 60,
            **vault,
        },
    }


@pytest.fixture
def station(tmp_path: Path, ceph_cluster: CephCluster, bucket: str) -> Iterator[Services]:
    opened = Services.open(Config.model_validate(station_config(tmp_path, ceph_cluster, bucket)))
    try:
        yield opened
    finally:
        opened.close()
        unseal_tree(tmp_path)


def replicator_for(services: Services, **settings: Any) -> Replicator:
    vault_settings = services.config.vault.settings("test config")
    if settings:
        vault_settings = replace(vault_settings, **settings)
    return Replicator(services, Vault(vault_settings))


def ingest(
    services: Services, tmp_path: Path, sizes: list[int], *, serial: str = "ZFY0200", seed: int | None = None
) -> list[str]:
    """Ingest a card of recordings of these payload sizes; returns the BLAKE3 digests of every `V…`
    recording so far. Cards given distinct `seed`s never share bytes (no deduplication between them)."""
    card = tmp_path / f"card-{serial}-{len(sizes)}"
    card.mkdir()
    for index, size in enumerate(sizes):
        write_mp4(
            card / f"V{index:03d}.MP4",
            created_at=datetime.now(UTC) - timedelta(hours=1, minutes=index),
            payload_size=size,
            duration_s=30,
            seed=None if seed is None else seed + index,
        )
    summary = run_import(
        services,
        card,
        device_id=serial,
        officer_no=None,
        settings=IngestSettings(),
        clock=lambda: datetime.now(UTC),
    )
    assert summary.files == len(sizes), summary
    with services.catalog.transaction() as db:
        return list(
            db.scalars(
                select(Recording.blake3).where(Recording.original_path.like("V%")).order_by(Recording.id)
            ).all()
        )


def queue(
    services: Services, kind: ReplicationKind | None = ReplicationKind.OBJECT
) -> dict[str, ReplicationItem]:
    """The queue's rows by subject: objects only, or every row with `kind=None`."""
    query = select(ReplicationItem)
    if kind is not None:
        query = query.where(ReplicationItem.kind == kind)
    with services.catalog.transaction() as db:
        return {row.subject: row for row in db.scalars(query).all()}


def versions(s3: S3Client, bucket: str, key: str) -> list[str]:
    listed = s3.list_object_versions(Bucket=bucket, Prefix=key)
    return [version.get("VersionId", "") for version in listed.get("Versions", [])]


def open_uploads(s3: S3Client, bucket: str, key: str) -> list[str]:
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    return [upload.get("UploadId", "") for upload in uploads]


def test_an_ingested_object_is_queued_in_its_commit_then_replicated_locked_and_audited(
    station: Services, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    digests = ingest(station, tmp_path, [3000, 5000])
    rows = queue(station)
    assert set(rows) == set(digests)
    assert {row.state for row in rows.values()} == {ReplicationState.PENDING}

    result = replicator_for(station).drain()
    assert result.failed == 0
    rows = queue(station)
    assert result.replicated == len(queue(station, None))  # the objects, and the audit records so far
    with station.catalog.transaction() as db:
        stored = {o.blake3: o for o in db.scalars(select(StoredObject)).all()}
        events = db.scalars(select(AuditEvent).where(AuditEvent.action == "vault.replicate")).all()
    assert sorted(e.subject for e in events) == sorted(f"object:{d}" for d in digests)
    for digest in digests:
        row = rows[digest]
        assert row.state is ReplicationState.REPLICATED
        head = s3.head_object(Bucket=bucket, Key=object_key(digest))
        assert head.get("ObjectLockMode") == COMPLIANCE
        assert head["ContentLength"] == stored[digest].size
        assert head["Metadata"]["sha256"] == stored[digest].sha256
        assert head.get("ObjectLockRetainUntilDate") == row.retain_until
        assert row.retain_until is not None
        assert row.retain_until == replication.whole_second_after(add_months(stored[digest].stored_at, 6))
        assert row.version_id == head.get("VersionId")
        with pytest.raises(ClientError) as refused:
            s3.delete_object(Bucket=bucket, Key=object_key(digest), VersionId=row.version_id or "")
        assert refused.value.response.get("Error", {}).get("Code") == "AccessDenied"
    # A second pass has nothing to send.
    assert replicator_for(station).drain() == type(result)(0, 0, 0)
    assert {row.state for row in queue(station, None).values()} == {ReplicationState.REPLICATED}


def test_hold_release_and_a_rising_class_change_the_vault_lock_and_a_downgrade_does_not(
    station: Services, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    (digest,) = ingest(station, tmp_path, [4000], serial="ZFY0201")
    replicator = replicator_for(station)
    replicator.drain()
    key = object_key(digest)
    with station.catalog.transaction() as db:
        recording_id = db.scalars(select(Recording.id).where(Recording.blake3 == digest)).one()
        ingested_at = db.scalars(select(Recording.ingested_at).where(Recording.id == recording_id)).one()
    now = datetime.now(UTC)

    with station.catalog.transaction() as db:
        operations.hold(
            db,
            station.audit,
            actor=seed.CLERK,
            now=now,
            reason="complaint",
            recording_ids=[recording_id],
        )
    assert replicator.sync_locks() == 1
    assert s3.get_object_legal_hold(Bucket=bucket, Key=key)["LegalHold"] == {"Status": "ON"}

    with station.catalog.transaction() as db:
        operations.release(
            db, station.audit, actor=seed.CLERK, now=now, reason="closed", recording_ids=[recording_id]
        )
        operations.tag(
            db,
            station.audit,
            actor=seed.CLERK,
            now=now,
            retention=station.config.retention,
            recording_ids=[recording_id],
            retention_class=RetentionClass.STANDARD,
        )
    assert replicator.sync_locks() == 1
    assert s3.get_object_legal_hold(Bucket=bucket, Key=key)["LegalHold"] == {"Status": "OFF"}
    three_years = replication.whole_second_after(add_months(ingested_at, 36))
    assert s3.head_object(Bucket=bucket, Key=key).get("ObjectLockRetainUntilDate") == three_years

    # Back to routine: compliance mode keeps the vault copy until its date; nothing is pushed.
    with station.catalog.transaction() as db:
        operations.tag(
            db,
            station.audit,
            actor=APPROVER,
            now=now,
            retention=station.config.retention,
            recording_ids=[recording_id],
            retention_class=RetentionClass.ROUTINE,
        )
    assert replicator.sync_locks() == 0
    assert s3.head_object(Bucket=bucket, Key=key).get("ObjectLockRetainUntilDate") == three_years
    with station.catalog.transaction() as db:
        actions = db.scalars(
            select(AuditEvent.details).where(AuditEvent.action == "vault.lock").order_by(AuditEvent.seq)
        ).all()
    assert [sorted(details) for details in actions] == [
        ["bucket", "legal_hold"],
        ["bucket", "legal_hold", "retain_until"],
    ]


def test_an_unreachable_vault_fails_the_item_for_a_later_retry_and_ingest_goes_on(
    tmp_path: Path, ceph_cluster: CephCluster, bucket: str
) -> None:
    config = station_config(tmp_path, ceph_cluster, bucket, endpoint=f"http://127.0.0.1:{free_port()}")
    services = Services.open(Config.model_validate(config))
    try:
        (first,) = ingest(services, tmp_path, [2000], serial="ZFY0202")
        result = replicator_for(services, max_attempts=1, connect_timeout=2.0).drain()
        assert (result.replicated, result.failed) == (0, len(queue(services, None)))
        row = queue(services)[first]
        assert row.state is ReplicationState.FAILED
        assert row.attempts == 1
        assert "is unreachable" in (row.last_error or "")
        assert row.next_attempt_at > datetime.now(UTC) + timedelta(seconds=30)
        # Docking goes on: the next card is ingested and queued as if the vault were there.
        second = ingest(services, tmp_path, [2100], serial="ZFY0203")
        assert queue(services)[second[-1]].state is ReplicationState.PENDING
        # Backing off: the failed item is not due again yet.
        with services.catalog.transaction() as db:
            assert [i.subject for i in replication.due(db, datetime.now(UTC), limit=10)] == [second[-1]]
    finally:
        services.close()
        unseal_tree(tmp_path)


def test_radosgw_killed_mid_upload_then_restarted_resumes_the_parts_and_stores_the_object_once(
    station: Services, ceph_cluster: CephCluster, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    (digest,) = ingest(station, tmp_path, [3 * S3_MIN_PART_SIZE + 4321], serial="ZFY0204")
    key = object_key(digest)
    replicator = replicator_for(station, max_attempts=1, connect_timeout=2.0)
    sent: list[int] = []

    def kill_after_first_part(**_: object) -> None:
        sent.append(1)
        if len(sent) == 1:
            ceph_cluster.kill_rgw()

    replicator.vault.client.meta.events.register("after-call.s3.UploadPart", kill_after_first_part)
    try:
        result = replicator.drain()
    finally:
        if "radosgw" not in ceph_cluster.processes:
            ceph_cluster.start_rgw()
    assert result.failed >= 1  # the object (audit records sent beside it may have gone first)
    row = queue(station)[digest]
    assert row.state is ReplicationState.FAILED
    assert row.upload_id is not None
    assert [part["n"] for part in row.parts] == [1]
    assert open_uploads(s3, bucket, key) == [row.upload_id]

    resumed = replicator_for(station)
    parts_sent: list[int] = []
    resumed.vault.client.meta.events.register(
        "before-parameter-build.s3.UploadPart", lambda params, **_: parts_sent.append(params["PartNumber"])
    )
    result = resumed.drain(ignore_backoff=True)
    assert result.failed == 0
    assert {row.state for row in queue(station, None).values()} == {ReplicationState.REPLICATED}
    assert parts_sent == [2, 3, 4]  # part 1 was already on the server with the same MD5
    row = queue(station)[digest]
    assert (row.state, row.upload_id, row.parts) == (ReplicationState.REPLICATED, None, [])
    assert len(versions(s3, bucket, key)) == 1
    assert open_uploads(s3, bucket, key) == []
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-4")
    assert head.get("ObjectLockMode") == COMPLIANCE
    with station.catalog.transaction() as db:
        stored = db.get(StoredObject, digest)
        assert stored is not None
        sha256, size = stored.sha256, stored.size
    assert sum(len(c) for c in resumed.vault.stream(digest, sha256_hex=sha256, size=size)) == size


def run_entry(
    package: str, config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`ingestd` (package ingestd.cli) or `ingestctl` (ingestd.ctl) as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-c", f"from {package} import main; main()", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def ingestd(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_entry("ingestd.cli", config, *args, env=env)


def ingestctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_entry("ingestd.ctl", config, *args)


def write_toml(tmp_path: Path, config: dict[str, Any]) -> Path:
    lines: list[str] = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        for name, value in values.items():
            rendered = str(value).lower() if isinstance(value, bool) else repr(value)
            lines.append(f"{name} = {rendered}".replace("'", '"'))
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_replicate_once_killed_with_sigkill_mid_upload_resumes_and_exits_0_when_all_is_verified(
    station: Services, s3: S3Client, bucket: str, tmp_path: Path, ceph_cluster: CephCluster
) -> None:
    digests = ingest(station, tmp_path, [2 * S3_MIN_PART_SIZE + 99, 1500], serial="ZFY0205")
    large = digests[0]
    config = write_toml(tmp_path, station_config(tmp_path, ceph_cluster, bucket, concurrency=1))

    killed = ingestd(config, "replicate", "--once", env={"INGESTD_CRASH_AT": "vault-part:1"})
    assert killed.returncode == -9, killed.stderr
    row = queue(station)[large]
    assert row.state is ReplicationState.UPLOADING  # the process died holding it
    assert row.upload_id is not None
    assert [part["n"] for part in row.parts] == [1]

    done = ingestd(config, "replicate", "--once")
    assert done.returncode == 0, done.stderr
    assert "0 not replicated" in done.stdout
    for digest in digests:
        key = object_key(digest)
        assert len(versions(s3, bucket, key)) == 1
        assert open_uploads(s3, bucket, key) == []
        assert s3.head_object(Bucket=bucket, Key=key).get("ObjectLockMode") == COMPLIANCE
    assert {row.state for row in queue(station, None).values()} == {ReplicationState.REPLICATED}
    shown = ingestctl(config, "replication", "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["counts"]["replicated"] == len(queue(station, None))
    assert (report["bucket"], report["served_by"], report["oldest_pending_age_s"]) == (
        bucket,
        "catalog",
        None,
    )
    assert report["bytes_per_s_last_hour"] > 0
    plain = ingestctl(config, "replication")
    assert plain.returncode == 0, plain.stderr
    assert f"vault: {bucket} at {ceph_cluster.endpoint}" in plain.stdout
    assert (
        f"items: replicated {report['counts']['replicated']}, pending 0, uploading 0, failed 0"
        in plain.stdout
    )
    assert "oldest not replicated: none" in plain.stdout
    verify = ingestctl(config, "verify", "--objects")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_replicate_once_exits_56_with_one_line_while_items_are_left(
    tmp_path: Path, ceph_cluster: CephCluster, bucket: str
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    config_data = station_config(tmp_path, ceph_cluster, bucket, endpoint=endpoint)
    services = Services.open(Config.model_validate(config_data))
    try:
        ingest(services, tmp_path, [1000], serial="ZFY0206")
    finally:
        services.close()
    done = ingestd(write_toml(tmp_path, config_data), "replicate", "--once")
    assert done.returncode == 56, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    reopened = Services.open(Config.model_validate(config_data), migrate=False, cameras=False)
    try:
        left = len(queue(reopened, None))
    finally:
        reopened.close()
    assert left > 1  # the object and the audit records
    assert lines[-1].startswith(f"ingestd: error: replication incomplete: {left} item(s) not replicated")
    assert f"vault endpoint {endpoint} is unreachable" in lines[-1]
    assert f"{left} not replicated" in done.stdout
    unseal_tree(tmp_path)


def test_replicate_needs_once_and_an_enabled_vault(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[vault]\nenabled = false\n", encoding="utf-8")
    usage = ingestd(config, "replicate")
    assert usage.returncode == 2
    assert "only --once is supported" in usage.stderr
    disabled = ingestd(config, "replicate", "--once")
    assert disabled.returncode == 78
    assert "vault.enabled is false" in disabled.stderr
    assert len(disabled.stderr.strip().splitlines()) == 1


def test_the_audit_chain_is_anchored_locked_and_a_rewritten_local_chain_is_reported_by_verify_vault(
    station: Services, s3: S3Client, bucket: str, tmp_path: Path, ceph_cluster: CephCluster
) -> None:
    ingest(station, tmp_path, [1200], serial="ZFY0207")
    config = write_toml(tmp_path, station_config(tmp_path, ceph_cluster, bucket))
    done = ingestd(config, "replicate", "--once")
    assert done.returncode == 0, done.stderr
    anchored = audit_anchor.prefix(audit_anchor.AnchoredChain.of(station.audit))
    keys = [
        item.get("Key", "") for item in s3.list_objects_v2(Bucket=bucket, Prefix=anchored).get("Contents", [])
    ]
    segments = [key for key in keys if "/segments/" in key]
    assert segments
    assert [key for key in keys if "/checkpoints/" in key]
    for key in keys:
        assert s3.head_object(Bucket=bucket, Key=key).get("ObjectLockMode") == COMPLIANCE
    with station.catalog.transaction() as db:
        head = db.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1)).one()
    assert segments[-1].endswith(f"-{head:012d}.jsonl")  # every event up to the head is anchored
    clean = ingestctl(config, "verify", "--vault", "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    report = json.loads(clean.stdout)
    assert report["vault"]["events_compared"] == head
    assert report["vault"]["problems"] == []

    # Root rewrites the last event, re-hashes the chain and re-signs a checkpoint with the station key.
    assert rewrite_chain(station.catalog.engine, {"forged": True}, start=head) == head
    unseal_tree(station.config.daemon.state_dir)
    (station.config.daemon.state_dir / "audit-checkpoints.jsonl").unlink()
    forger = Services.open(station.config, migrate=False, cameras=False)
    try:
        assert forger.audit.checkpoint(forger.catalog) is not None
    finally:
        forger.close()
    local_only = ingestctl(config, "verify", "--json")
    assert json.loads(local_only.stdout)["clean"] is True, local_only.stdout  # the forgery holds locally
    caught = ingestctl(config, "verify", "--vault")
    assert caught.returncode == 3, caught.stdout + caught.stderr
    assert f"vault event-differs {segments[-1]}" in caught.stdout
    assert f"event {head}: local hash" in caught.stdout
    assert "vault checkpoint-differs" in caught.stdout


def test_vault_scrub_reads_back_the_replicated_versions_and_reports_one_shadowed_by_a_newer_put(
    station: Services, s3: S3Client, bucket: str, tmp_path: Path, ceph_cluster: CephCluster
) -> None:
    digests = ingest(station, tmp_path, [2500, 3500], serial="ZFY0208")
    assert replicator_for(station).drain().failed == 0
    config = write_toml(tmp_path, station_config(tmp_path, ceph_cluster, bucket))

    clean = ingestd(config, "vault", "scrub", "--json")
    assert clean.returncode == 0, clean.stderr
    report = json.loads(clean.stdout)
    assert (report["checked"], report["clean"]) == (2, True)
    assert report["bytes"] == sum(row.size for row in queue(station).values())
    assert all(row.scrubbed_at is not None and row.scrub_error is None for row in queue(station).values())

    # Someone with write access to the bucket puts other bytes under the first object's key: the locked
    # version stays, but a plain read of the key would now return the newer one.
    first = digests[0]
    s3.put_object(Bucket=bucket, Key=object_key(first), Body=b"not the footage")
    caught = ingestd(config, "vault", "scrub", "--sample", "1")
    assert caught.returncode == 3, caught.stdout + caught.stderr
    assert caught.stdout.splitlines()[0].startswith(f"PROBLEM {first}: a newer version")
    assert "vault scrub: 1 object(s)" in caught.stdout
    assert "shadows the replicated version" in (queue(station)[first].scrub_error or "")
    with station.catalog.transaction() as db:
        events = db.scalars(select(AuditEvent).where(AuditEvent.action == "vault.scrub")).all()
    assert [(event.outcome, event.details["checked"]) for event in events] == [("ok", 2), ("failed", 1)]


def test_an_object_the_purge_removed_before_it_replicated_leaves_the_queue(tmp_path: Path) -> None:
    config = {
        "daemon": {"state_dir": str(tmp_path / "state")},
        "catalog": {"url": f"sqlite:///{tmp_path / 'state' / 'catalog.db'}"},
        "store": {"root": str(tmp_path / "store")},
        "vault": {"endpoint": f"http://127.0.0.1:{free_port()}", "bucket": "evidence", "access_key_id": "AK"},
    }
    services = Services.open(Config.model_validate(config))
    try:
        kept, purged = ingest(services, tmp_path, [1000, 1100], serial="ZFY0209")
        with services.catalog.transaction() as db:
            stored = db.get(StoredObject, purged)
            assert stored is not None
            stored.removed_at = datetime.now(UTC)  # as the retention purge leaves it
        replicator = Replicator(
            services, Vault(VaultSettings("http://127.0.0.1:9", "evidence", "us-east-1", "AK", "s"))
        )
        assert replicator.replicate(queue(services)[purged].id) is None
        assert set(queue(services)) == {kept}
    finally:
        services.close()
        unseal_tree(tmp_path)
