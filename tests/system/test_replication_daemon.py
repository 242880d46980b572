"""The daemon's replicator: a vault outage leaves docking unchanged, and the queue catches up after.

The real daemon as a subprocess, a simulated camera, and the real single-node Ceph; what the vault
holds is asked of the server with the station's own credentials.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from store.models import (
    AuditEvent,
    DockVisit,
    Recording,
    ReplicationItem,
    ReplicationKind,
    ReplicationState,
    SessionState,
    StoredObject,
)
from store.vault import COMPLIANCE, object_key
from tests.support.ceph import CephCluster, free_port
from tests.support.loopdev import ext4_filesystem, require_root_tools
from tests.system.harness import Daemon, SimulatedCamera, stored_recordings, wait_for

SERIAL = "ZFY7001"
MIB = 1024 * 1024


def vault_config(cluster: CephCluster, bucket: str, secret: Path, endpoint: str | None = None) -> str:
    assert cluster.user is not None
    secret.write_text(cluster.user.secret_access_key + "\n", encoding="ascii")
    secret.chmod(0o600)
    return f"""
[vault]
enabled = true
endpoint = "{endpoint or cluster.endpoint}"
bucket = "{bucket}"
access_key_id = "{cluster.user.access_key_id}"
secret_access_key_file = "{secret}"
part_size_mib = 5
retry_initial_seconds = 1.0
"""


def queue_states(daemon: Daemon) -> dict[str, ReplicationState]:
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            rows = db.scalars(select(ReplicationItem).where(ReplicationItem.kind == ReplicationKind.OBJECT))
            return {row.subject: row.state for row in rows.all()}
    finally:
        catalog.close()


def test_docking_goes_on_while_the_vault_is_down_and_the_queue_catches_up_after(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera], ceph_cluster: CephCluster, tmp_path: Path
) -> None:
    bucket = ceph_cluster.create_bucket(object_lock=True)
    secret = tmp_path / "vault-secret"
    down = f"http://127.0.0.1:{free_port()}"
    daemon.extra_config = vault_config(ceph_cluster, bucket, secret, endpoint=down)
    camera = make_camera(SERIAL, files=3, size_bytes=6 * MIB)
    daemon.start()
    camera.dock(daemon.docks)
    listed = stored_recordings(daemon, SERIAL, 3)
    digests = {recording["blake3"] for recording in listed}

    def all_failed() -> bool:
        states = queue_states(daemon)
        return set(states) == digests and set(states.values()) == {ReplicationState.FAILED}

    wait_for("every object failed against the unreachable vault", all_failed, timeout=120)
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            assert db.scalars(select(Recording.blake3)).all()  # the footage itself is stored
            states = db.scalars(select(DockVisit.state)).all()
            assert states == [SessionState.DONE]
    finally:
        catalog.close()
    assert daemon.stop() == 0

    daemon.extra_config = vault_config(ceph_cluster, bucket, secret)
    daemon.start()

    def all_replicated() -> bool:
        return set(queue_states(daemon).values()) == {ReplicationState.REPLICATED}

    wait_for("the queue to catch up", all_replicated, timeout=180)
    s3 = ceph_cluster.client()
    for digest in digests:
        head = s3.head_object(Bucket=bucket, Key=object_key(digest))
        assert head.get("ObjectLockMode") == COMPLIANCE
        versions = s3.list_object_versions(Bucket=bucket, Prefix=object_key(digest)).get("Versions", [])
        assert len(versions) == 1
    assert daemon.stop() == 0
    assert daemon.events("replicator_started")


def test_the_daemon_evicts_past_the_high_water_mark_after_replicating_each_eviction_audited(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera], ceph_cluster: CephCluster, tmp_path: Path
) -> None:
    require_root_tools("mkfs.ext4")
    bucket = ceph_cluster.create_bucket(object_lock=True)
    with ext4_filesystem(tmp_path, 64, name="store") as store_root:
        daemon.store_root = store_root
        daemon.extra_config = vault_config(ceph_cluster, bucket, tmp_path / "vault-secret") + (
            "evict_high_water_percent = 40\nevict_low_water_percent = 25\n"
        )
        camera = make_camera(SERIAL, files=6, size_bytes=6 * MIB)
        daemon.start()
        try:
            camera.dock(daemon.docks)
            stored_recordings(daemon, SERIAL, 6)

            def below_high_water() -> bool:
                usage = shutil.disk_usage(store_root)
                return 100 * usage.used / (usage.used + usage.free) <= 40

            wait_for("the daemon to evict down past its high-water mark", below_high_water, timeout=240)
            catalog = daemon.catalog()
            try:
                with catalog.transaction() as db:
                    evicted = db.scalars(
                        select(StoredObject.blake3)
                        .where(StoredObject.evicted_at.is_not(None))
                        .order_by(StoredObject.stored_at, StoredObject.blake3)
                    ).all()
                    oldest = db.scalars(
                        select(StoredObject.blake3).order_by(StoredObject.stored_at, StoredObject.blake3)
                    ).all()
                    audited = db.scalars(
                        select(AuditEvent.subject).where(AuditEvent.action == "store.evict")
                    ).all()
            finally:
                catalog.close()
            assert evicted
            assert list(evicted) == list(oldest[: len(evicted)])  # the oldest went first
            assert sorted(audited) == sorted(f"object:{digest}" for digest in evicted)
            assert all(not (store_root / object_key(digest)).exists() for digest in evicted)
            assert queue_states(daemon).keys() >= set(evicted)
        finally:
            assert daemon.stop() == 0
