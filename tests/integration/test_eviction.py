"""Local eviction past a high-water mark and stream-back of evicted recordings, against a real Ceph.

The store is a 64 MiB ext4 loop image filled by real ingests; the vault is the session's single-node
Ceph (one bucket for the module). What the vault holds is tampered with as each adversary could: with
the station's own credentials (a newer version, a delete marker: the locked version stays) and below
S3, on the OSD (`rados put` over the object's head: what root on the Ceph cluster could do).
The tests share one station built once for the module (`scene`) and run in file order: each later
one relies on what the earlier ones left (which objects are evicted, shadowed or altered). Tests that
need a station in a state of their own (`evicted_station`, or a store or state directory on a
filesystem of its own) build it in their `tmp_path`, sharing only the bucket.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from drivers.mp4 import write_mp4
from ingestd import stream_back, vault_scrub
from ingestd.config import Config
from ingestd.control import protocol, queries
from ingestd.control.handlers_evidence import approve, copy, export, view
from ingestd.control.registry import Request
from ingestd.daemon import lock_state
from ingestd.eviction import Usage, check_evicted_in_vault, evict
from ingestd.evidence.errors import ApprovalRefused
from ingestd.evidence.verify_bag import verify_bag
from ingestd.importer import run_import
from ingestd.purge import purge
from ingestd.services import Services
from ingestd.session import IngestSettings
from ingestd.stream_back import SpoolRefusedError
from ingestd.verify import verify_catalog_rows, verify_objects
from store.audit import Role
from store.models import AuditEvent, Camera, Recording, ReplicationItem, ReplicationState, StoredObject
from store.vault import Vault, VaultIntegrityError, VaultUnreachableError, object_key
from tests.integration.test_evidence_export import call
from tests.integration.test_replication import (
    ingest,
    ingestctl,
    ingestd,
    queue,
    replicator_for,
    station_config,
    write_toml,
)
from tests.support.ceph import CephCluster, free_port
from tests.support.evidence import APPROVER, CLERK, World
from tests.support.loopdev import ext4_filesystem, ext4_on_failable_device, require_root_tools
from tests.support.objectstore import unseal_tree

MiB = 1024 * 1024
STORE_MIB = 64
PAYLOAD = 4 * MiB  # below the 5 MiB part size: one PUT, one RGW head object holding the first 4 MiB


@dataclass
class Scene:
    """A station whose small store went past its high-water mark: `unreplicated` were ingested first
    and never replicated, `replicated` after them (oldest first); the first of those failed its scrub
    (someone put a newer version over it). `dry` and `real` are `ingestd vault evict --json` runs."""

    services: Services
    config_file: Path
    bucket: str
    unreplicated: list[str]
    replicated: list[str]
    data: dict[str, bytes]
    recording: dict[str, int]
    high: int
    low: int
    before_percent: float
    dry: dict[str, Any]
    real: dict[str, Any]

    @property
    def world(self) -> World:
        return World(self.services)


@pytest.fixture(scope="module")
def bucket(ceph_cluster: CephCluster) -> str:
    return ceph_cluster.create_bucket(object_lock=True)


def percent_used(root: Path) -> float:
    usage = shutil.disk_usage(root)
    return 100.0 * usage.used / (usage.used + usage.free)


@pytest.fixture(scope="module")
def scene(
    ceph_cluster: CephCluster, bucket: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scene]:
    require_root_tools("mkfs.ext4", "chattr")
    tmp_path = tmp_path_factory.mktemp("eviction")
    with ext4_filesystem(tmp_path, STORE_MIB, name="store") as store_root:
        services = Services.open(Config.model_validate(station_config(tmp_path, ceph_cluster, bucket)))
        try:
            yield _build(services, ceph_cluster, bucket, tmp_path, store_root)
        finally:
            services.close()
            unseal_tree(tmp_path)


def ingest_card(services: Services, tmp_path: Path, serial: str, count: int) -> list[str]:
    """Ingest a card of `count` recordings of PAYLOAD bytes, distinct from every other card's (seeded
    by the serial); returns their BLAKE3 digests in ingest order."""
    ingest(services, tmp_path, [PAYLOAD] * count, serial=serial, seed=int(serial[-4:]) * 100)
    with services.catalog.transaction() as db:
        return list(
            db.scalars(
                select(Recording.blake3)
                .join(Camera, Camera.id == Recording.camera_id)
                .where(Camera.device_serial == serial)
                .order_by(Recording.id)
            ).all()
        )


def _build(services: Services, cluster: CephCluster, bucket: str, tmp_path: Path, store_root: Path) -> Scene:
    unreplicated = ingest_card(services, tmp_path, "ZFY0301", 2)
    with services.catalog.transaction() as db:  # as after failures: backing off, so a pass skips them
        db.execute(
            update(ReplicationItem)
            .where(ReplicationItem.subject.in_(unreplicated))
            .values(next_attempt_at=datetime.now(UTC) + timedelta(days=1))
        )
    replicated = ingest_card(services, tmp_path, "ZFY0302", 4)
    assert replicator_for(services).drain().failed == 0
    states = queue(services)
    assert [states[d].state.value for d in replicated] == ["replicated"] * 4
    assert [states[d].state.value for d in unreplicated] == ["pending"] * 2

    # Someone with the station's credentials puts other bytes over the oldest replicated object: the
    # scrub reports it, and eviction must then keep the local copy.
    cluster.client().put_object(Bucket=bucket, Key=object_key(replicated[0]), Body=b"not the footage")
    report = vault_scrub.scrub(services, replicator_for(services).vault, now=datetime.now(UTC))
    assert list(report.failures) == [replicated[0]]

    with services.catalog.transaction() as db:
        stored = {o.blake3: o for o in db.scalars(select(StoredObject)).all()}
        recording = {r.blake3: r.id for r in db.scalars(select(Recording)).all()}
    data = {d: services.store.path_for(d).read_bytes() for d in replicated}
    # Marks from the real filesystem: above the high-water mark now, and the low-water mark 1.5
    # objects below, so exactly two objects must go (the failed one is skipped, the third stays).
    before = percent_used(store_root)
    usage = shutil.disk_usage(store_root)
    share = 100.0 * stored[replicated[1]].size / (usage.used + usage.free)
    high, low = math.floor(before) - 1, math.floor(before - 1.5 * share)
    assert 1 <= low < high, (before, share)
    config_file = write_toml(
        tmp_path,
        station_config(tmp_path, cluster, bucket, evict_high_water_percent=high, evict_low_water_percent=low),
    )
    dry = ingestd(config_file, "vault", "evict", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    real = ingestd(config_file, "vault", "evict", "--json")
    assert real.returncode == 0, real.stdout + real.stderr
    return Scene(
        services=services,
        config_file=config_file,
        bucket=bucket,
        unreplicated=unreplicated,
        replicated=replicated,
        data=data,
        recording=recording,
        high=high,
        low=low,
        before_percent=before,
        dry=json.loads(dry.stdout),
        real=json.loads(real.stdout),
    )


def evicted_at(scene: Scene) -> dict[str, datetime | None]:
    with scene.services.catalog.transaction() as db:
        return {o.blake3: o.evicted_at for o in db.scalars(select(StoredObject)).all()}


# -- eviction --------------------------------------------------------------------------------------


def test_past_the_high_water_mark_the_oldest_confirmed_objects_go_each_audited_and_the_rest_stay(
    scene: Scene,
) -> None:
    a0, a1, a2, a3 = scene.replicated
    # The dry run planned exactly what the real run did, and touched nothing itself.
    assert scene.dry["evicted"] == [a1, a2]
    assert scene.dry["after"] is None
    assert scene.real["evicted"] == [a1, a2]
    assert scene.real["before"]["percent"] > scene.high
    assert scene.real["after"]["percent"] < scene.high
    assert scene.real["kept"] == {a0: scene.real["kept"][a0]}
    assert scene.real["kept"][a0].startswith("its last scrub failed")

    store = scene.services.store
    assert not store.exists(a1)
    assert not store.exists(a2)
    for digest in [*scene.unreplicated, a0, a3]:  # never replicated, failed scrub, not needed
        assert store.exists(digest)
    marks = evicted_at(scene)
    assert {d for d, at in marks.items() if at is not None} == {a1, a2}
    with scene.services.catalog.transaction() as db:
        events = db.scalars(select(AuditEvent).where(AuditEvent.action == "store.evict")).all()
        assert [(e.subject, e.outcome, e.source) for e in events] == [
            (f"object:{a1}", "ok", "eviction"),
            (f"object:{a2}", "ok", "eviction"),
        ]
        assert [e.at for e in events] == [marks[a1], marks[a2]]
    rows = queue(scene.services)
    assert events[0].details["version_id"] == rows[a1].version_id
    assert events[0].details["key"] == object_key(a1)

    # A second run finds the store below its high-water mark: nothing more goes.
    again = ingestd(scene.config_file, "vault", "evict", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["evicted"] == []


def test_verify_counts_evicted_objects_and_replication_and_footage_show_them(scene: Scene) -> None:
    a1, a2 = scene.replicated[1:3]
    checked = ingestctl(scene.config_file, "verify", "--objects", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert (report["clean"], report["objects_evicted"]) == (True, 2)
    assert report["objects_checked"] == len(scene.unreplicated) + 2

    shown = ingestctl(scene.config_file, "replication", "--json")
    assert shown.returncode == 0, shown.stderr
    size = len(scene.data[a1]) + len(scene.data[a2])
    assert json.loads(shown.stdout)["evicted"] == {"objects": 2, "bytes": size}
    status = ingestctl(scene.config_file, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["store"]["evicted_objects"] == 2

    with scene.services.catalog.transaction() as db:
        page = queries.footage(db, {}, zone=ZoneInfo("UTC"), role=Role.ADMIN)
    evicted = {item["id"] for item in page["recordings"] if item["evicted"]}
    assert evicted == {scene.recording[a1], scene.recording[a2]}


def test_an_object_marked_evicted_without_its_audit_event_is_reported_by_verify(
    scene: Scene, tmp_path: Path
) -> None:
    """Someone who can write the catalog marks an object evicted to hide that its bytes are gone."""
    a3 = scene.replicated[3]
    with scene.services.catalog.transaction() as db:
        db.execute(update(StoredObject).where(StoredObject.blake3 == a3).values(evicted_at=datetime.now(UTC)))
    try:
        _, evicted, problems = verify_objects(scene.services)
        assert evicted == 3
        assert problems == []  # not re-hashed: the row check names it
        assert [(p.kind, p.subject) for p in verify_catalog_rows(scene.services)] == [
            ("row-mismatch", f"object:{a3}")
        ]
    finally:
        with scene.services.catalog.transaction() as db:
            db.execute(update(StoredObject).where(StoredObject.blake3 == a3).values(evicted_at=None))


# -- stream-back -----------------------------------------------------------------------------------


def approval_for(scene: Scene, digests: list[str], now: datetime) -> int:
    return approval_of(scene.world, [scene.recording[d] for d in digests], now)


def approval_of(world: World, recording_ids: list[int], now: datetime, expires_in: str = "1d") -> int:
    """An approval for the clerk to view, copy and export these recordings, granted at `now`."""
    answer = call(
        world,
        approve,
        APPROVER,
        now=now,
        purpose="court",
        expires_in=expires_in,
        grantee=CLERK.user,
        recording_ids=recording_ids,
    )
    return int(answer["id"])


def test_an_evicted_recording_is_copied_viewed_and_exported_from_the_vault_with_the_exact_bytes(
    scene: Scene, tmp_path: Path, ceph_cluster: CephCluster
) -> None:
    a1 = scene.replicated[1]
    # What the station's own credentials can do to the vault: a delete marker and a newer version over
    # the key. The locked version the replicator confirmed is what stream-back reads.
    s3 = ceph_cluster.client()
    s3.delete_object(Bucket=scene.bucket, Key=object_key(a1))
    s3.put_object(Bucket=scene.bucket, Key=object_key(a1), Body=b"a forged recording")
    now = datetime.now(UTC)
    approval = approval_for(scene, [a1], now)

    copied = tmp_path / "copy"
    result = call(scene.world, copy, CLERK, now=now, approval_id=approval, dest=str(copied))
    [name] = result["files"]
    assert (copied / name).read_bytes() == scene.data[a1]
    assert not scene.services.store.exists(a1)  # read back, not put back in the store

    passed = call(scene.world, view, CLERK, now=now, approval_id=approval, recording_id=scene.recording[a1])
    assert isinstance(passed, protocol.PassedFile)
    with passed.file as opened:
        assert opened.read() == scene.data[a1]
        assert os.fstat(opened.fileno()).st_nlink == 0  # an unlinked spool, gone when closed
        assert fcntl.fcntl(opened.fileno(), fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY

    bag = tmp_path / "bag"
    call(scene.world, export, CLERK, now=now, approval_id=approval, dest=str(bag))
    report = verify_bag(bag, trusted_keys=[scene.services.audit.signer.public_key])
    assert report.valid, report.problems
    [exported] = (bag / "data").glob(f"*_r{scene.recording[a1]}.*")
    assert hashlib.sha256(exported.read_bytes()).hexdigest() == hashlib.sha256(scene.data[a1]).hexdigest()


def test_an_unreachable_vault_refuses_stream_back_with_one_line_naming_it(
    scene: Scene, tmp_path: Path
) -> None:
    a1 = scene.replicated[1]
    now = datetime.now(UTC)
    approval = approval_for(scene, [a1], now)
    settings = scene.services.config.vault.settings("test")
    endpoint = f"http://127.0.0.1:{free_port()}"
    saved = scene.services.vault
    scene.services.vault = Vault(replace(settings, endpoint=endpoint, max_attempts=1, connect_timeout=2))
    try:
        dest = tmp_path / "copy"
        with pytest.raises(VaultUnreachableError) as refused:
            call(scene.world, copy, CLERK, now=now, approval_id=approval, dest=str(dest))
        assert refused.value.exit_code == 51
        assert endpoint in str(refused.value)
        assert "\n" not in str(refused.value)
        assert not dest.exists()
        with pytest.raises(VaultUnreachableError):
            call(scene.world, view, CLERK, now=now, approval_id=approval, recording_id=scene.recording[a1])
    finally:
        scene.services.vault = saved


def rados_head(cluster: CephCluster, key: str, version_id: str) -> str:
    """The OSD object holding the first bytes of one object version (its RGW head)."""
    names = cluster.run("rados", "-p", "default.rgw.buckets.data", "ls").split()
    [head] = [name for name in names if name.endswith(f"{version_id}_{key}")]
    return head


def test_a_vault_copy_altered_on_the_osd_is_refused_by_stream_back_with_exit_3_and_nothing_left(
    scene: Scene, tmp_path: Path, ceph_cluster: CephCluster
) -> None:
    """Root on the Ceph cluster rewrites the locked version's bytes below S3 (compliance mode cannot
    stop that): both digests are checked on the way back, so nothing of it is handed out."""
    a2 = scene.replicated[2]
    version = queue(scene.services)[a2].version_id
    assert version
    head = rados_head(ceph_cluster, object_key(a2), version)
    original = tmp_path / "head"
    ceph_cluster.run("rados", "-p", "default.rgw.buckets.data", "get", head, str(original))
    altered = bytearray(original.read_bytes())
    altered[100] ^= 0xFF
    forged = tmp_path / "forged"
    forged.write_bytes(bytes(altered))
    ceph_cluster.run("rados", "-p", "default.rgw.buckets.data", "put", head, str(forged))

    now = datetime.now(UTC)
    approval = approval_for(scene, [a2], now)
    for handler, args in (
        (copy, {"dest": str(tmp_path / "copy")}),
        (export, {"dest": str(tmp_path / "bag")}),
        (view, {"recording_id": scene.recording[a2]}),
    ):
        with pytest.raises(VaultIntegrityError) as refused:
            call(scene.world, handler, CLERK, now=now, approval_id=approval, **args)
        assert refused.value.exit_code == 3
        assert "read back as" in str(refused.value)
    assert not (tmp_path / "copy").exists()
    assert not (tmp_path / "bag").exists()
    assert not list(tmp_path.glob("*.partial"))

    # Removed on the OSD altogether: the only copy is gone, an integrity error too.
    ceph_cluster.run("rados", "-p", "default.rgw.buckets.data", "rm", head)
    with pytest.raises(VaultIntegrityError):
        call(scene.world, copy, CLERK, now=now, approval_id=approval, dest=str(tmp_path / "copy2"))
    # Its bytes put back (without RGW's attributes, which `rados put` does not restore).
    ceph_cluster.run("rados", "-p", "default.rgw.buckets.data", "put", head, str(original))


def test_verify_vault_reports_an_evicted_object_shadowed_in_the_vault(scene: Scene) -> None:
    """The copy test put a newer version over the first evicted object with the station's credentials,
    and the OSD test altered the second below S3."""
    a1, a2 = scene.replicated[1:3]
    checked = ingestctl(scene.config_file, "verify", "--vault", "--json")
    assert checked.returncode == 3, checked.stdout + checked.stderr
    found = {(p["kind"], p["key"]) for p in json.loads(checked.stdout)["vault"]["problems"]}
    assert ("evicted-object-differs", object_key(a1)) in found
    # Its head was removed on the OSD and its bytes put back without RGW's attributes: not confirmed.
    assert ("evicted-object-differs", object_key(a2)) in found


def test_ingestd_vault_evict_is_refused_with_one_line_while_eviction_is_off(tmp_path: Path) -> None:
    config = {
        "daemon": {"state_dir": str(tmp_path / "state")},
        "catalog": {"url": f"sqlite:///{tmp_path / 'state' / 'catalog.db'}"},
        "store": {"root": str(tmp_path / "store")},
    }
    off = ingestd(write_toml(tmp_path, config), "vault", "evict")
    assert off.returncode == 78
    assert "eviction is off" in off.stderr
    assert len(off.stderr.strip().splitlines()) == 1


def test_a_real_eviction_run_is_refused_while_the_daemon_holds_the_state_directory(scene: Scene) -> None:
    held = lock_state(scene.services.config.daemon.state_dir)  # as `ingestd run` holds it
    try:
        refused = ingestd(scene.config_file, "vault", "evict")
        assert refused.returncode == 43, refused.stdout + refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert ingestd(scene.config_file, "vault", "evict", "--dry-run").returncode == 0
    finally:
        os.close(held)


def test_the_marks_are_checked_when_the_config_is_loaded() -> None:
    with pytest.raises(ValueError, match="evict_low_water_percent \\(90\\) must be below"):
        Config.model_validate({"vault": {"evict_high_water_percent": 85, "evict_low_water_percent": 90}})
    assert not Config.model_validate({"vault": {"evict_high_water_percent": 85}}).vault.evicts


def with_marks(scene: Scene, **vault: Any) -> Services:
    """The scene's station as the daemon would open it with its eviction marks (and `vault` keys)."""
    marks = {"evict_high_water_percent": scene.high, "evict_low_water_percent": scene.low, **vault}
    config = scene.services.config
    return replace(
        scene.services, config=config.model_copy(update={"vault": config.vault.model_copy(update=marks)})
    )


def test_the_replicator_evicts_after_its_pass_reading_back_a_copy_confirmed_too_long_ago(
    scene: Scene, tmp_path: Path
) -> None:
    """The daemon's path: the store passes the mark again; the replicator's pass sends the new objects,
    then evicts, and the oldest candidate's confirmation is older than allowed, so it is read back
    from the vault (both digests) before it goes."""
    a0, _, _, a3 = scene.replicated
    services = with_marks(scene, evict_confirmed_within_hours=1)
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    with services.catalog.transaction() as db:
        db.execute(
            update(ReplicationItem)
            .where(ReplicationItem.subject == a3)
            .values(replicated_at=long_ago, scrubbed_at=long_ago)
        )
    fresh = ingest_card(services, tmp_path, "ZFY0303", 2)
    replicator = replicator_for(services)
    assert replicator.drain().failed == 0
    report = replicator.evict_past_high_water()

    assert report.evicted == [a3, fresh[0]]
    assert report.read_back == [a3]
    assert report.after is not None
    assert report.after.percent < scene.high
    row = queue(services)[a3]
    assert row.scrubbed_at is not None
    assert row.scrubbed_at > long_ago
    assert row.scrub_error is None
    for digest in [*scene.unreplicated, a0, fresh[1]]:
        assert services.store.exists(digest)


def ingest_again(scene: Scene, tmp_path: Path, digest: str, serial: str) -> None:
    """Ingest the bytes of `digest` again from a card of camera `serial`: afterwards the object is
    local and live, proven by this put's read-back."""
    card = tmp_path / "card"
    card.mkdir()
    (card / "AGAIN.MP4").write_bytes(scene.data[digest])
    started = datetime.now(UTC)
    summary = run_import(
        scene.services,
        card,
        device_id=serial,
        officer_no=None,
        settings=IngestSettings(),
        clock=lambda: datetime.now(UTC),
    )
    assert summary.files == 1, summary
    assert scene.services.store.exists(digest)
    with scene.services.catalog.transaction() as db:
        stored = db.get_one(StoredObject, digest)
        assert (stored.removed_at, stored.evicted_at) == (None, None)
        assert stored.last_verified_at is not None
        assert stored.last_verified_at >= started  # this put's read-back proved the bytes


def test_the_same_bytes_ingested_again_make_an_evicted_object_local_again(
    scene: Scene, tmp_path: Path
) -> None:
    a1 = scene.replicated[1]
    ingest_again(scene, tmp_path, a1, "ZFY0304")
    sha256 = hashlib.sha256(scene.data[a1]).hexdigest()
    assert scene.services.store.verify_object(a1, sha256, len(scene.data[a1])) == []


def test_an_object_being_read_is_kept_and_a_dry_run_plans_the_read_back_of_an_old_confirmation(
    scene: Scene,
) -> None:
    with scene.services.catalog.transaction() as db:
        local = db.scalars(
            select(StoredObject.blake3)
            .join(ReplicationItem, ReplicationItem.subject == StoredObject.blake3)
            .where(StoredObject.evicted_at.is_(None), ReplicationItem.scrub_error.is_(None))
            .where(ReplicationItem.state == ReplicationState.REPLICATED)
            .order_by(StoredObject.stored_at, StoredObject.blake3)
        ).all()
    oldest, following = local[0], local[1]
    full = Usage(used=99 * MiB, available=MiB)  # far past any mark: every candidate is wanted
    services = with_marks(scene)
    vault = replicator_for(services).vault
    with services.in_use.reading([oldest]):
        report = evict(services, vault, now=datetime.now(UTC), dry_run=True, usage=lambda: full)
    assert report.kept[oldest] == "it is being read (a copy, an export or a viewing)"
    assert report.evicted[0] == following
    later = evict(
        services, vault, now=datetime.now(UTC) + timedelta(days=30), dry_run=True, usage=lambda: full
    )
    assert later.evicted[:2] == [oldest, following]
    assert later.read_back[:2] == [oldest, following]  # confirmed more than a week before that instant
    assert scene.services.store.exists(oldest)  # a dry run touches nothing


def test_an_eviction_cut_by_sigkill_after_its_commit_is_finished_by_the_next_run(
    scene: Scene, tmp_path: Path, ceph_cluster: CephCluster
) -> None:
    config = write_toml(
        tmp_path,
        station_config(
            scene.config_file.parent,
            ceph_cluster,
            scene.bucket,
            evict_high_water_percent=2,
            evict_low_water_percent=1,
        ),
    )
    killed = ingestd(config, "vault", "evict", env={"INGESTD_CRASH_AT": "evict-commit:1"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    marked = {d for d, at in evicted_at(scene).items() if at is not None}
    [cut] = [d for d in marked if scene.services.store.exists(d)]  # on record, its bytes still here
    _, evicted, problems = verify_objects(scene.services)
    assert problems == []
    assert evicted == len(marked)

    finished = ingestd(config, "vault", "evict", "--json")
    assert finished.returncode in {0, 57}, finished.stdout + finished.stderr
    assert json.loads(finished.stdout)["finished"] == [cut]
    assert not scene.services.store.exists(cut)
    assert evict_outcomes(scene.services, cut) == ["ok", "finished"]


def evict_outcomes(services: Services, digest: str) -> list[str]:
    """The outcomes of the object's `store.evict` events, in chain order."""
    with services.catalog.transaction() as db:
        return list(
            db.scalars(
                select(AuditEvent.outcome)
                .where(AuditEvent.action == "store.evict", AuditEvent.subject == f"object:{digest}")
                .order_by(AuditEvent.seq)
            ).all()
        )


def test_the_retention_purge_of_an_evicted_object_removes_nothing_locally_and_says_so(scene: Scene) -> None:
    a2 = scene.replicated[2]  # evicted, its recording now a tombstone as a purge run leaves it
    assert evicted_at(scene)[a2] is not None
    now = datetime.now(UTC)
    with scene.services.catalog.transaction() as db:
        db.execute(update(Recording).where(Recording.blake3 == a2).values(purged_at=now))
    report = purge(
        scene.services.catalog,
        scene.services.store,
        scene.services.audit,
        actor=APPROVER,
        now=now,
        rules=scene.services.config.retention.rules(),
        dry_run=False,
    )
    assert a2 in report.removed_objects
    with scene.services.catalog.transaction() as db:
        [event] = db.scalars(
            select(AuditEvent).where(
                AuditEvent.action == "retention.remove", AuditEvent.subject == f"object:{a2}"
            )
        ).all()
        assert (event.outcome, event.details["detail"]) == (
            "absent",
            "evicted earlier: the vault copy stays until its lock date",
        )
        stored = db.get(StoredObject, a2)
        assert stored is not None
        assert stored.removed_at is not None


def test_an_object_marked_evicted_behind_the_chain_keeps_its_bytes_and_is_reported(scene: Scene) -> None:
    """A catalog writer marks a never-replicated object evicted: the next run's finishing pass must not
    take it for a cut eviction and delete the only copy."""
    pending = scene.unreplicated[0]
    with scene.services.catalog.transaction() as db:
        db.execute(
            update(StoredObject).where(StoredObject.blake3 == pending).values(evicted_at=datetime.now(UTC))
        )
    try:
        services = with_marks(scene)
        report = evict(
            services,
            replicator_for(services).vault,
            now=datetime.now(UTC),
            dry_run=False,
            usage=lambda: Usage(used=MiB, available=99 * MiB),  # below the marks: only the finishing pass
        )
        assert scene.services.store.exists(pending)
        assert pending not in report.finished
        assert "the audit chain leaves it local" in report.kept[pending]
        assert evict_outcomes(scene.services, pending) == []
    finally:
        with scene.services.catalog.transaction() as db:
            db.execute(update(StoredObject).where(StoredObject.blake3 == pending).values(evicted_at=None))


def test_a_known_file_whose_object_was_evicted_is_stored_again_and_deleted(
    tmp_path: Path, ceph_cluster: CephCluster, bucket: str
) -> None:
    """A camera docked again still holds a file stored (and since evicted) on an earlier dock: its
    proof cannot re-read a local copy that is gone, so the bytes are stored again and read back."""
    marks = {"evict_high_water_percent": 2, "evict_low_water_percent": 1}
    services = Services.open(Config.model_validate(station_config(tmp_path, ceph_cluster, bucket, **marks)))
    try:
        card = tmp_path / "card"
        card.mkdir()
        write_mp4(
            card / "V000.MP4",
            created_at=datetime.now(UTC) - timedelta(hours=2),
            payload_size=MiB,
            duration_s=30,
            seed=41,
        )

        def dock(*, delete: bool) -> Any:
            return run_import(
                services,
                card,
                device_id="ZFY0305",
                officer_no=None,
                settings=IngestSettings(delete_after_ingest=delete),
                clock=lambda: datetime.now(UTC),
            )

        assert dock(delete=False).files == 1
        with services.catalog.transaction() as db:
            [digest] = db.scalars(select(Recording.blake3)).all()
        assert replicator_for(services).drain().failed == 0
        report = evict(services, replicator_for(services).vault, now=datetime.now(UTC), dry_run=False)
        assert report.evicted == [digest]
        assert not services.store.exists(digest)

        summary = dock(delete=True)
        assert (summary.reason, summary.errors, summary.deleted) == (None, 0, 1), summary
        assert not (card / "V000.MP4").exists()
        assert services.store.exists(digest)
        with services.catalog.transaction() as db:
            stored = db.get_one(StoredObject, digest)
            assert stored.evicted_at is None
            assert stored.last_verified_at is not None
            assert stored.last_verified_at >= report.at  # this put's read-back, not the first one's
            assert len(db.scalars(select(Recording.id)).all()) == 1
            [restored] = db.scalars(select(AuditEvent).where(AuditEvent.action == "store.restore")).all()
            assert restored.subject == f"object:{digest}"
        assert verify_catalog_rows(services) == []
        _, evicted, problems = verify_objects(services)
        assert (evicted, problems) == (0, [])
    finally:
        services.close()
        unseal_tree(tmp_path)


def test_a_delete_marker_over_a_candidate_keeps_it_and_the_pass_evicts_the_next(
    tmp_path: Path, ceph_cluster: CephCluster, bucket: str
) -> None:
    """With the station's credentials someone deletes the oldest object's key (a delete marker: the
    locked version stays). The pass keeps that object, says why, and goes on; over an evicted object a
    delete marker does not make its locked version "missing"."""
    marks = {"evict_high_water_percent": 2, "evict_low_water_percent": 1}
    services = Services.open(Config.model_validate(station_config(tmp_path, ceph_cluster, bucket, **marks)))
    try:
        oldest, following = ingest(services, tmp_path, [MiB, MiB], serial="ZFY0306", seed=30600)
        vault = replicator_for(services).vault
        assert replicator_for(services).drain().failed == 0
        ceph_cluster.client().delete_object(Bucket=bucket, Key=object_key(oldest))

        report = evict(services, vault, now=datetime.now(UTC), dry_run=False)
        assert "delete marker" in report.kept[oldest]
        assert report.evicted == [following]
        assert services.store.exists(oldest)
        assert not services.store.exists(following)

        ceph_cluster.client().delete_object(Bucket=bucket, Key=object_key(following))
        problems = check_evicted_in_vault(services, vault)
        assert all(p.kind != "evicted-object-missing" for p in problems)
    finally:
        services.close()
        unseal_tree(tmp_path)


def test_a_removal_that_fails_after_the_unlink_stays_evicted_and_streams_back(
    tmp_path: Path, ceph_cluster: CephCluster, bucket: str
) -> None:
    """The store's disk dies between the unlink and the directory fsync: the bytes are gone locally, so
    the row must stay evicted (read from the vault), not point readers at a local copy that is not there."""
    require_root_tools("mkfs.ext4", "fallocate")
    marks = {"evict_high_water_percent": 2, "evict_low_water_percent": 1}
    with ext4_on_failable_device(tmp_path, 32, name="store") as (_, fail_writes):
        services = Services.open(
            Config.model_validate(station_config(tmp_path, ceph_cluster, bucket, **marks))
        )
        try:
            [digest] = ingest(services, tmp_path, [MiB], serial="ZFY0307", seed=30700)
            data = services.store.path_for(digest).read_bytes()
            replicator = replicator_for(services)
            assert replicator.drain().failed == 0
            fail_writes()
            report = evict(services, replicator.vault, now=datetime.now(UTC), dry_run=False)
            assert digest in report.failed
            assert not services.store.exists(digest)
            with services.catalog.transaction() as db:
                assert db.get_one(StoredObject, digest).evicted_at is not None
            assert evict_outcomes(services, digest) == ["ok", "gone"]
            assert verify_catalog_rows(services) == []
            with stream_back.open_object(services, digest) as reader:
                assert reader.read() == data
        finally:
            services.close()
            unseal_tree(tmp_path)


def test_viewings_past_the_spool_budget_are_refused_and_the_state_dir_keeps_its_reserve(
    tmp_path: Path, ceph_cluster: CephCluster, bucket: str
) -> None:
    """A clerk with an approval views an evicted recording again and again, holding each spool open:
    the state directory's filesystem (the catalog's) keeps its reserve, and a recording larger than
    the spool budget is refused outright. Each refusal is one line with exit 58."""
    require_root_tools("mkfs.ext4")
    with (
        ext4_filesystem(tmp_path, 64, name="state") as state_dir,
        evicted_station(tmp_path, ceph_cluster, bucket, "ZFY0308") as (station, recording_id, size),
    ):
        now = datetime.now(UTC)
        approval = approval_of(World(station), [recording_id], now)

        def viewing(**vault: Any) -> Any:
            config = station.config
            services = replace(
                station, config=config.model_copy(update={"vault": config.vault.model_copy(update=vault)})
            )
            return call(
                World(services), view, CLERK, now=now, approval_id=approval, recording_id=recording_id
            )

        with pytest.raises(SpoolRefusedError) as refused:
            viewing(stream_back_spool_mib=size // MiB)
        assert refused.value.exit_code == 58
        assert "vault.stream_back_spool_mib" in str(refused.value)
        assert "\n" not in str(refused.value)

        reserve_mib = (shutil.disk_usage(state_dir).free - size - size // 2) // MiB
        reserve = {"stream_back_reserve_mib": reserve_mib}
        first = viewing(**reserve)
        with first.file as held:  # the clerk keeps it open: its blocks stay allocated
            with pytest.raises(SpoolRefusedError) as refused:
                viewing(**reserve)
            assert refused.value.exit_code == 58
            assert "vault.stream_back_reserve_mib" in str(refused.value)
            assert shutil.disk_usage(state_dir).free >= reserve_mib * MiB
            assert hashlib.sha256(held.read()).hexdigest() == first.result["sha256"]
        with viewing(**reserve).file as again:  # the first one closed: room again
            assert len(again.read()) == size


@contextlib.contextmanager
def evicted_station(
    tmp_path: Path, cluster: CephCluster, bucket: str, serial: str
) -> Iterator[tuple[Services, int, int]]:
    """A station of its own holding one recording of PAYLOAD bytes, replicated and evicted: yields
    the station, the recording's id and its size."""
    marks = {"evict_high_water_percent": 2, "evict_low_water_percent": 1}
    station = Services.open(Config.model_validate(station_config(tmp_path, cluster, bucket, **marks)))
    try:
        [digest] = ingest(station, tmp_path, [PAYLOAD], serial=serial, seed=int(serial[-4:]) * 100)
        assert replicator_for(station).drain().failed == 0
        assert evict(station, replicator_for(station).vault, now=datetime.now(UTC), dry_run=False).evicted
        with station.catalog.transaction() as db:
            [recording_id] = db.scalars(select(Recording.id)).all()
            size = db.get_one(StoredObject, digest).size
        yield station, recording_id, size
    finally:
        station.close()
        unseal_tree(tmp_path)


def test_a_viewing_whose_approval_expired_while_it_was_spooled_is_refused(
    tmp_path: Path, ceph_cluster: CephCluster, bucket: str
) -> None:
    """The approval is checked again after the vault read, at the time it is then, not at the request's."""
    with evicted_station(tmp_path, ceph_cluster, bucket, "ZFY0309") as (station, recording_id, _):
        asked = datetime.now(UTC) - timedelta(minutes=90)
        # Expired 30 minutes ago; still valid at the instant the view was asked.
        approval = approval_of(World(station), [recording_id], asked - timedelta(minutes=30), "1h")
        asking = Request(
            command="view",
            args={"approval_id": approval, "recording_id": recording_id},
            actor=CLERK,
            now=asked,
            clock=lambda: datetime.now(UTC),  # the server's clock, read again once the spool is done
        )
        with pytest.raises(ApprovalRefused) as refused:
            view(station, asking)
        assert refused.value.exit_code == 14
        assert "expired" in str(refused.value)


def test_the_bytes_of_an_evicted_then_purged_object_ingested_again_are_local_and_live(
    scene: Scene, tmp_path: Path
) -> None:
    """After the purge test: a2 was evicted, then purged. The same bytes from a camera make the row
    live and local again, not 'evicted' over local bytes (which the next run would take for a cut)."""
    a2 = scene.replicated[2]
    ingest_again(scene, tmp_path, a2, "ZFY0310")
    assert [p for p in verify_catalog_rows(scene.services) if p.subject == f"object:{a2}"] == []
