"""Sending stored files to the vault (`Vault.put`, what the replicator runs per object) beside a plain
boto3 `upload_file` of the same files to the same bucket, on a throw-away single-node Ceph.

`Vault.put` reads and hashes every byte (BLAKE3 and SHA-256), sends each part with Content-MD5, locks
the object in compliance mode and confirms size, metadata and lock from the server; `upload_file` only
sends. Prints MiB/s for both and the ratio against the target (0.9). Needs root and Debian's Ceph
packages (ceph-mon, ceph-osd, radosgw, ceph-common); the OSD keeps everything in RAM, about twice the
files' total size.

    .venv/bin/python -m bench.vault [--files 2] [--size-mib 256] [--dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from boto3.s3.transfer import TransferConfig

from bench.common import MiB, drop_caches, make_source
from store.digests import Digests
from store.vault import Vault, VaultSettings
from tests.support.ceph import CephCluster, missing_programs

TARGET = 0.9
PART = 64 * MiB


def digests_of(path: Path) -> Digests:
    digests = Digests()
    with path.open("rb") as source:
        while chunk := source.read(4 * MiB):
            digests.update(chunk)
    return digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument(
        "--dir", type=Path, default=None, help="Where the source files go (default: a temp dir)."
    )
    options = parser.parse_args()
    missing = missing_programs()
    if missing:
        raise SystemExit(f"bench.vault: Ceph programs not found ({', '.join(missing)})")
    size = options.size_mib * MiB
    work = options.dir or Path(tempfile.mkdtemp(prefix="bench-vault-"))
    sources = [work / f"source-{index}.bin" for index in range(options.files)]
    for source in sources:
        make_source(source, size)
    sums = [digests_of(source) for source in sources]
    cluster = CephCluster(
        Path(tempfile.mkdtemp(prefix="bench-ceph-")), memstore_bytes=2 * options.files * size + 512 * MiB
    )
    try:
        cluster.start()
        bucket = cluster.create_bucket(object_lock=True)
        assert cluster.user is not None
        vault = Vault(
            VaultSettings(
                endpoint=cluster.endpoint,
                bucket=bucket,
                region="us-east-1",
                access_key_id=cluster.user.access_key_id,
                secret_access_key=cluster.user.secret_access_key,
                part_size=PART,
                multipart_threshold=PART,
            )
        )
        plain = cluster.client()
        transfer = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=1)
        # Warm-up, not timed: radosgw creates its data pools on the first write.
        plain.put_object(Bucket=bucket, Key="baseline/warm-up", Body=b"\0" * MiB)
        drop_caches()
        started = time.perf_counter()
        for index, source in enumerate(sources):
            plain.upload_file(str(source), bucket, f"baseline/{index}", Config=transfer)
        baseline = time.perf_counter() - started
        until = datetime.now(UTC) + timedelta(days=1)
        drop_caches()
        started = time.perf_counter()
        for source, digests in zip(sources, sums, strict=True):
            blake3_hex, sha256_hex = digests.hex()
            vault.put(
                source, blake3_hex=blake3_hex, sha256_hex=sha256_hex, size=digests.size, retain_until=until
            )
        ours = time.perf_counter() - started
    finally:
        cluster.stop()
        if options.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    total_mib = options.files * options.size_mib
    print(f"{options.files} x {options.size_mib} MiB to radosgw on loopback, parts of {PART // MiB} MiB")
    print(f"  boto3 upload_file                    {total_mib / baseline:8.1f} MiB/s")
    print(f"  Vault.put (hashed, locked, confirmed) {total_mib / ours:8.1f} MiB/s")
    print(f"  ratio {baseline / ours:.2f} (target {TARGET})")


if __name__ == "__main__":
    main()
