"""Replication to the vault through the replicator, beside a plain boto3 `upload_file` of the same
files to the same bucket, and an ingest's throughput alone and with the replicator running beside it,
all in one run on a throw-away single-node Ceph.

1. `upload_file` of N files of S MiB (2 transfers at once) against the replicator draining the same
   files from a station's store (`vault.concurrency` 2): the replicator reads and hashes every byte
   (BLAKE3 and SHA-256), sends each part with Content-MD5, locks each object in compliance mode,
   confirms size, metadata and lock from the server, and commits the queue row with its audit event.
   Target: at least 0.9 of the baseline.
2. `ingestd import` of N files of S MiB alone, then again while the replicator sends a backlog of N
   objects, with ingest priority as the daemon wires it (the replicator starts no transfer and sends
   no part while a dock is ingesting), and once without that priority, to show what it buys. Target:
   the ingest beside the replicator (with priority) at least 0.9 of the ingest alone.

Needs root and Debian's Ceph packages (ceph-mon, ceph-osd, radosgw, ceph-common), else it says why and
skips; the OSD keeps every object in RAM (about 5 x N x S).

    .venv/bin/python -m bench.vault [--files 2] [--size-mib 256] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from boto3.s3.transfer import TransferConfig
from sqlalchemy import select

from bench.common import MiB, drop_caches
from bench.ingest import REPO, ingestd, make_card, write_config
from ingestd.config import load_config
from ingestd.demo import remove_sealed_tree
from ingestd.replicator import Replicator
from ingestd.services import Services
from store.models import ReplicationItem, ReplicationKind, ReplicationState
from store.vault import Vault
from tests.support.ceph import CephCluster, missing_programs

TARGET = 0.9
PART_MIB = 64
CONCURRENCY = 2


def skip_reason() -> str | None:
    missing = missing_programs()
    if missing:
        return f"Ceph programs not found ({', '.join(missing)}): install Debian's ceph-mon ceph-osd radosgw"
    if os.geteuid() != 0:
        return "the throw-away Ceph runs its daemons as root"
    return None


def station_config(work: Path, cluster: CephCluster, bucket: str) -> Path:
    """bench.ingest's station, with the vault enabled (the secret in a root-only file)."""
    assert cluster.user is not None
    config = write_config(work, udev=False)
    secret = work / "vault-secret"
    secret.write_text(cluster.user.secret_access_key + "\n", encoding="ascii")
    secret.chmod(0o600)
    with config.open("a", encoding="utf-8") as out:
        out.write(
            f"""
[vault]
enabled = true
endpoint = "{cluster.endpoint}"
bucket = "{bucket}"
access_key_id = "{cluster.user.access_key_id}"
secret_access_key_file = "{secret}"
part_size_mib = {PART_MIB}
concurrency = {CONCURRENCY}
"""
        )
    return config


def import_card(config: Path, card: Path, serial: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ingestd("import", str(card), "--device-id", serial, "--json", "--config", str(config)),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def ingest_rate(child: subprocess.Popen[str], files: int, size: int) -> float:
    """MiB/s the import reports for its own copy (its summary's seconds)."""
    output, _ = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"ingestd import exited {child.returncode}")
    summary = json.loads(output.splitlines()[-1])
    assert summary["files"] == files, summary
    return files * size / MiB / float(summary["seconds"])


def ingest_beside(
    services: Services, vault: Vault, config: Path, card: Path, *, files: int, size: int, priority: bool
) -> tuple[float, int]:
    """An import while the replicator's thread drains the queue: (import MiB/s, objects replicated
    meanwhile). With `priority`, the replicator is told a dock is ingesting while the import runs."""
    child: subprocess.Popen[str] | None = None

    def busy() -> bool:
        return priority and child is not None and child.poll() is None

    replicator = Replicator(services, vault, ingest_busy=busy)
    before = replicated_count(services)
    drop_caches()
    child = import_card(config, card, card.name)
    replicator.start()
    try:
        rate = ingest_rate(child, files, size)
    finally:
        replicator.stop()
    return rate, replicated_count(services) - before


def replicated_count(services: Services) -> int:
    """Objects (not audit records) replicated so far."""
    with services.catalog.transaction() as db:
        return len(
            db.scalars(
                select(ReplicationItem.id).where(
                    ReplicationItem.kind == ReplicationKind.OBJECT,
                    ReplicationItem.state == ReplicationState.REPLICATED,
                )
            ).all()
        )


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--dir", type=Path, default=None, help="Work directory (default: a temp dir).")
    options = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    reason = skip_reason()
    if reason is not None:
        print(f"bench.vault: skipped: {reason}")
        return
    files, size = options.files, options.size_mib * MiB
    work = options.dir or Path(tempfile.mkdtemp(prefix="bench-vault-"))
    cards = {serial: work / "cards" / serial for serial in ("ZFY0001", "ZFY0002", "ZFY0003", "ZFY0004")}
    sources = {serial: make_card(card, serial, files, size) for serial, card in cards.items()}
    cluster = CephCluster(
        Path(tempfile.mkdtemp(prefix="bench-ceph-")), memstore_bytes=5 * files * size + 512 * MiB
    )
    try:
        cluster.start()
        bucket = cluster.create_bucket(object_lock=True)
        config_path = station_config(work, cluster, bucket)
        plain = cluster.client()
        # Warm-up, not timed: radosgw creates its data pools on the first write.
        plain.put_object(Bucket=bucket, Key="baseline/warm-up", Body=b"\0" * MiB)
        transfer = TransferConfig(
            multipart_threshold=PART_MIB * MiB,
            multipart_chunksize=PART_MIB * MiB,
            max_concurrency=CONCURRENCY,
        )
        first = sources["ZFY0001"]
        drop_caches()

        def upload_baseline() -> None:
            for index, source in enumerate(first):
                plain.upload_file(str(source), bucket, f"baseline/{index}", Config=transfer)

        baseline = timed(upload_baseline)

        ingest_rate(import_card(config_path, cards["ZFY0001"], "ZFY0001"), files, size)  # the backlog
        config = load_config(config_path)
        services = Services.open(config, migrate=False, cameras=False)
        try:
            vault = Vault(config.vault.settings(config_path))
            replicator = Replicator(services, vault)
            drop_caches()
            ours = timed(lambda: replicator.drain(ignore_backoff=True))
            assert replicated_count(services) >= files, "the replicator left objects behind"

            drop_caches()
            alone = ingest_rate(import_card(config_path, cards["ZFY0002"], "ZFY0002"), files, size)
            beside, sent_beside = ingest_beside(
                services, vault, config_path, cards["ZFY0003"], files=files, size=size, priority=True
            )
            unprioritised, sent_unprioritised = ingest_beside(
                services, vault, config_path, cards["ZFY0004"], files=files, size=size, priority=False
            )
        finally:
            services.close()
    finally:
        cluster.stop()
        for name in ("store", "state"):
            remove_sealed_tree(work / name)
        if options.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    total_mib = files * options.size_mib
    print(
        f"{files} x {options.size_mib} MiB to radosgw on loopback, parts of {PART_MIB} MiB, "
        f"{CONCURRENCY} transfers at once"
    )
    print(f"  boto3 upload_file (baseline)                    {total_mib / baseline:8.1f} MiB/s")
    print(f"  replicator (hashed, locked, confirmed, audited) {total_mib / ours:8.1f} MiB/s")
    print(f"  ratio {baseline / ours:.2f} (target {TARGET})")
    print(f"  ingest alone                                    {alone:8.1f} MiB/s")
    print(
        f"  ingest, replicator running (ingest priority)    {beside:8.1f} MiB/s "
        f"({sent_beside} object(s) replicated meanwhile)"
    )
    print(f"  ratio {beside / alone:.2f} (target {TARGET})")
    print(
        f"  ingest, replicator running without priority    {unprioritised:8.1f} MiB/s "
        f"({sent_unprioritised} object(s) replicated meanwhile; ratio {unprioritised / alone:.2f})"
    )


if __name__ == "__main__":
    main()
