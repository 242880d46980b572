"""The vault adapter and `ingestd vault check` against a real single-node Ceph (radosgw, Object Lock).

What the server refuses is asked of the server itself, through a plain boto3 client with the
station's own credentials: the adapter's word is never the proof.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import blake3
import pytest
from botocore.exceptions import ClientError

from store.vault import (
    COMPLIANCE,
    S3_MIN_PART_SIZE,
    Vault,
    VaultIntegrityError,
    VaultObject,
    VaultObjectMissingError,
    VaultRetentionError,
    VaultSettings,
    object_key,
)
from tests.support.ceph import CephCluster, free_port

if TYPE_CHECKING:
    from botocore.awsrequest import AWSPreparedRequest
    from mypy_boto3_s3.client import S3Client

REPO = Path(__file__).resolve().parents[2]
PART = S3_MIN_PART_SIZE  # the smallest part S3 allows, so a few MiB exercise multipart


class Stored:
    """A file as the local store holds it: its bytes and both digests."""

    def __init__(self, directory: Path, data: bytes) -> None:
        self.data = data
        self.blake3 = blake3.blake3(data).hexdigest()
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.size = len(data)
        self.path = directory / self.blake3
        self.path.write_bytes(data)

    @property
    def key(self) -> str:
        return object_key(self.blake3)


def stored(directory: Path, size: int) -> Stored:
    return Stored(directory, os.urandom(size))


def put(vault: Vault, item: Stored, until: datetime, *, legal_hold: bool = False) -> VaultObject:
    return vault.put(
        item.path,
        blake3_hex=item.blake3,
        sha256_hex=item.sha256,
        size=item.size,
        retain_until=until,
        legal_hold=legal_hold,
    )


def settings_for(cluster: CephCluster, bucket: str, *, secret: str | None = None) -> VaultSettings:
    assert cluster.user is not None
    return VaultSettings(
        endpoint=cluster.endpoint,
        bucket=bucket,
        region="us-east-1",
        access_key_id=cluster.user.access_key_id,
        secret_access_key=secret or cluster.user.secret_access_key,
        part_size=PART,
        multipart_threshold=PART,
        max_attempts=1,
    )


@pytest.fixture(scope="module")
def locked_bucket(ceph_cluster: CephCluster) -> str:
    return ceph_cluster.create_bucket(object_lock=True)


@pytest.fixture
def vault(ceph_cluster: CephCluster, locked_bucket: str) -> Vault:
    return Vault(settings_for(ceph_cluster, locked_bucket))


@pytest.fixture
def s3(ceph_cluster: CephCluster) -> S3Client:
    return ceph_cluster.client()


def in_days(days: float) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


def server_code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return error.value.response.get("Error", {}).get("Code", "")


def versions(s3: S3Client, bucket: str, key: str) -> list[str]:
    listed = s3.list_object_versions(Bucket=bucket, Prefix=key)
    return [version.get("VersionId", "") for version in listed.get("Versions", [])]


# -- the adapter's contract ---------------------------------------------------------------------


def test_put_locks_the_object_under_its_content_address_with_its_digests(
    vault: Vault, s3: S3Client, locked_bucket: str, tmp_path: Path
) -> None:
    item = stored(tmp_path, 70_000)
    until = in_days(30)
    sent = put(vault, item, until)

    assert item.key == f"objects/{item.blake3[:2]}/{item.blake3[2:4]}/{item.blake3}"
    head = s3.head_object(Bucket=locked_bucket, Key=item.key)
    assert head["ContentLength"] == item.size
    assert head["Metadata"] == {"sha256": item.sha256, "blake3": item.blake3, "size": str(item.size)}
    assert head.get("ObjectLockMode") == COMPLIANCE
    assert head.get("ObjectLockRetainUntilDate") == until
    assert head.get("ObjectLockLegalHoldStatus", "OFF") == "OFF"
    assert sent.version_id == head.get("VersionId")
    assert sent.retain_until == until
    confirmed = vault.confirm(item.blake3, sha256_hex=item.sha256, size=item.size, retain_until=until)
    assert confirmed == sent


def test_a_delete_of_a_locked_version_is_refused_by_the_server(
    vault: Vault, s3: S3Client, locked_bucket: str, tmp_path: Path
) -> None:
    item = stored(tmp_path, 4096)
    sent = put(vault, item, in_days(1))
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=locked_bucket, Key=item.key, VersionId=sent.version_id)
    assert server_code(refused) == "AccessDenied"
    assert versions(s3, locked_bucket, item.key) == [sent.version_id]
    assert b"".join(vault.stream(item.blake3, sha256_hex=item.sha256, size=item.size)) == item.data


def test_retention_is_extended_and_never_shortened(
    vault: Vault, s3: S3Client, locked_bucket: str, tmp_path: Path
) -> None:
    item = stored(tmp_path, 1000)
    first, later = in_days(2), in_days(400)
    sent = put(vault, item, first)

    assert vault.extend_retention(item.blake3, later) == later
    retention = s3.get_object_retention(Bucket=locked_bucket, Key=item.key, VersionId=sent.version_id)
    assert retention["Retention"] == {"Mode": COMPLIANCE, "RetainUntilDate": later}

    with pytest.raises(VaultRetentionError, match="refusing to shorten") as local:
        vault.extend_retention(item.blake3, first)
    assert local.value.exit_code == 54
    assert locked_bucket in str(local.value)
    # The server refuses it too, to the station's own credentials.
    with pytest.raises(ClientError) as refused:
        s3.put_object_retention(
            Bucket=locked_bucket,
            Key=item.key,
            VersionId=sent.version_id,
            Retention={"Mode": COMPLIANCE, "RetainUntilDate": first},
        )
    assert server_code(refused) == "AccessDenied"
    assert vault.head(item.blake3).retain_until == later


def test_legal_hold_goes_on_and_off(vault: Vault, s3: S3Client, locked_bucket: str, tmp_path: Path) -> None:
    item = stored(tmp_path, 2000)
    put(vault, item, in_days(1), legal_hold=True)
    assert s3.get_object_legal_hold(Bucket=locked_bucket, Key=item.key)["LegalHold"] == {"Status": "ON"}
    assert vault.head(item.blake3).legal_hold is True

    vault.set_legal_hold(item.blake3, on=False)
    assert s3.get_object_legal_hold(Bucket=locked_bucket, Key=item.key)["LegalHold"] == {"Status": "OFF"}
    vault.set_legal_hold(item.blake3, on=True)
    assert vault.head(item.blake3).legal_hold is True


def test_a_large_object_goes_in_parts_each_with_content_md5_and_reads_back_equal(
    vault: Vault, s3: S3Client, locked_bucket: str, tmp_path: Path
) -> None:
    item = stored(tmp_path, 2 * PART + 12345)
    until = in_days(3)
    put(vault, item, until, legal_hold=True)

    head = s3.head_object(Bucket=locked_bucket, Key=item.key)
    assert head["ETag"].strip('"').endswith("-3")  # S3's mark of an object completed from three parts
    assert head["Metadata"] == {"sha256": item.sha256, "blake3": item.blake3, "size": str(item.size)}
    assert head.get("ObjectLockMode") == COMPLIANCE
    assert head.get("ObjectLockRetainUntilDate") == until
    assert head.get("ObjectLockLegalHoldStatus") == "ON"
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=locked_bucket, Key=item.key, VersionId=head.get("VersionId", ""))
    assert server_code(refused) == "AccessDenied"
    assert s3.list_multipart_uploads(Bucket=locked_bucket).get("Uploads", []) == []
    chunks = list(vault.stream(item.blake3, sha256_hex=item.sha256, size=item.size, chunk_size=1 << 20))
    assert len(chunks) > 1
    assert b"".join(chunks) == item.data


def test_every_body_sent_carries_its_own_content_md5(vault: Vault, tmp_path: Path) -> None:
    """The requests as botocore sends them on the wire (observed, not replaced)."""
    sent: list[tuple[str, str | None, str]] = []

    def record(request: AWSPreparedRequest, event_name: str, **_: object) -> None:
        body = request.body.getvalue() if isinstance(request.body, io.BytesIO) else request.body
        assert isinstance(body, bytes), type(body)
        digest = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        # No newer S3 checksum rides along: Ceph 16 ignores them, so none may stand in for Content-MD5.
        assert not [
            name for name in request.headers if name.lower().startswith(("x-amz-checksum", "x-amz-trailer"))
        ]
        header = request.headers.get("Content-MD5")
        sent.append(
            (event_name.rsplit(".", 1)[-1], header.decode() if isinstance(header, bytes) else header, digest)
        )

    vault.client.meta.events.register("before-send.s3.PutObject", record)
    vault.client.meta.events.register("before-send.s3.UploadPart", record)
    put(vault, stored(tmp_path, 3 * PART + 7), in_days(1))
    put(vault, stored(tmp_path, 100), in_days(1))

    assert [operation for operation, _, _ in sent] == ["UploadPart"] * 4 + ["PutObject"]
    assert all(header == digest for _, header, digest in sent), sent


def test_an_object_already_in_the_vault_is_stored_once(
    vault: Vault, s3: S3Client, locked_bucket: str, tmp_path: Path
) -> None:
    item = stored(tmp_path, 3000)
    later = in_days(9)
    first = put(vault, item, in_days(1))
    again = put(vault, item, later)
    assert versions(s3, locked_bucket, item.key) == [first.version_id]
    assert again.version_id == first.version_id
    assert again.retain_until == later


def test_an_object_left_unlocked_by_an_interrupted_put_is_locked_by_the_next_put(
    vault: Vault, s3: S3Client, locked_bucket: str, tmp_path: Path
) -> None:
    # RGW 16 completes a multipart upload without its lock; a crash before the lock leaves this.
    item = stored(tmp_path, 5000)
    metadata = {"sha256": item.sha256, "blake3": item.blake3, "size": str(item.size)}
    s3.put_object(Bucket=locked_bucket, Key=item.key, Body=item.data, Metadata=metadata)
    with pytest.raises(VaultIntegrityError, match="lock is none"):
        vault.confirm(item.blake3, sha256_hex=item.sha256, size=item.size)

    until = in_days(5)
    sent = put(vault, item, until, legal_hold=True)
    assert (sent.lock_mode, sent.retain_until, sent.legal_hold) == (COMPLIANCE, until, True)
    assert len(versions(s3, locked_bucket, item.key)) == 1


@pytest.mark.parametrize("size", [4096, 2 * PART + 1], ids=["single", "multipart"])
def test_a_local_file_that_does_not_match_its_digests_is_never_locked(
    vault: Vault, s3: S3Client, locked_bucket: str, tmp_path: Path, size: int
) -> None:
    item = stored(tmp_path, size)
    damaged = bytearray(item.data)
    damaged[size // 2] ^= 0x01
    item.path.write_bytes(bytes(damaged))

    with pytest.raises(VaultIntegrityError, match="nothing was locked") as refused:
        put(vault, item, in_days(1))
    assert refused.value.exit_code == 3
    assert versions(s3, locked_bucket, item.key) == []
    assert s3.list_multipart_uploads(Bucket=locked_bucket).get("Uploads", []) == []


def test_confirm_refuses_an_object_whose_server_side_facts_differ(
    vault: Vault, s3: S3Client, locked_bucket: str, tmp_path: Path
) -> None:
    item = stored(tmp_path, 500)
    # Someone with write access put other metadata, and no lock, under this content address.
    s3.put_object(Bucket=locked_bucket, Key=item.key, Body=item.data, Metadata={"sha256": "0" * 64})
    with pytest.raises(VaultIntegrityError, match="the server reports"):
        vault.confirm(item.blake3, sha256_hex=item.sha256, size=item.size)
    with pytest.raises(VaultIntegrityError, match="the server reports"):
        put(vault, item, in_days(1))

    other = stored(tmp_path, 600)
    metadata = {"sha256": other.sha256, "blake3": other.blake3, "size": str(other.size)}
    s3.put_object(Bucket=locked_bucket, Key=other.key, Body=other.data, Metadata=metadata)
    with pytest.raises(VaultIntegrityError, match="lock is none, not COMPLIANCE"):
        vault.confirm(other.blake3, sha256_hex=other.sha256, size=other.size)


def test_a_read_back_that_differs_from_its_digests_raises_at_the_end(
    vault: Vault, s3: S3Client, locked_bucket: str, tmp_path: Path
) -> None:
    item = stored(tmp_path, 800)
    forged = bytes(reversed(item.data))
    metadata = {"sha256": item.sha256, "blake3": item.blake3, "size": str(item.size)}
    s3.put_object(Bucket=locked_bucket, Key=item.key, Body=forged, Metadata=metadata)
    with pytest.raises(VaultIntegrityError, match="read back as"):
        b"".join(vault.stream(item.blake3, sha256_hex=item.sha256, size=item.size))
    # A put finds it there with the right metadata, reads it back, and refuses to count it as stored.
    with pytest.raises(VaultIntegrityError, match="read back as"):
        put(vault, item, in_days(1))
    assert len(versions(s3, locked_bucket, item.key)) == 1


def test_the_secret_never_appears_in_the_settings_repr(ceph_cluster: CephCluster, locked_bucket: str) -> None:
    settings = settings_for(ceph_cluster, locked_bucket)
    assert settings.secret_access_key not in repr(settings)
    assert locked_bucket in repr(settings)


def test_a_missing_object_is_named(vault: Vault, tmp_path: Path, locked_bucket: str) -> None:
    item = stored(tmp_path, 10)
    with pytest.raises(VaultObjectMissingError, match=item.key) as missing:
        vault.head(item.blake3)
    assert missing.value.exit_code == 55
    assert locked_bucket in str(missing.value)


def test_check_proves_a_locked_bucket(vault: Vault, s3: S3Client, locked_bucket: str) -> None:
    now = datetime.now(UTC)
    report = vault.check(now=now, probe_retention=timedelta(minutes=5))
    assert (report.versioning, report.object_lock) == ("Enabled", "Enabled")
    assert (report.delete_refused, report.shorten_refused) == ("AccessDenied", "AccessDenied")
    head = s3.head_object(Bucket=locked_bucket, Key=report.probe_key)
    assert head.get("ObjectLockMode") == COMPLIANCE
    assert head.get("ObjectLockRetainUntilDate") == report.probe_retain_until
    assert len(versions(s3, locked_bucket, report.probe_key)) == 1


# -- `ingestd vault check` as an operator runs it -------------------------------------------------


def secret_file(tmp_path: Path, secret: str, mode: int = 0o600) -> Path:
    path = tmp_path / "vault-secret"
    path.write_text(secret + "\n", encoding="ascii")
    path.chmod(mode)
    return path


def write_config(tmp_path: Path, *, endpoint: str, bucket: str, access_key_id: str, secret: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[vault]\nendpoint = "{endpoint}"\nbucket = "{bucket}"\naccess_key_id = "{access_key_id}"\n'
        f'secret_access_key_file = "{secret}"\n',
        encoding="utf-8",
    )
    return config


def vault_check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from ingestd.cli import main; main()",
            "vault",
            "check",
            "--config",
            str(config),
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=REPO,
    )


def cluster_config(cluster: CephCluster, tmp_path: Path, bucket: str) -> Path:
    assert cluster.user is not None
    return write_config(
        tmp_path,
        endpoint=cluster.endpoint,
        bucket=bucket,
        access_key_id=cluster.user.access_key_id,
        secret=secret_file(tmp_path, cluster.user.secret_access_key),
    )


def assert_one_line_refusal(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode == 78, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert done.stdout == ""
    for fragment in expected:
        assert fragment in lines[0], lines[0]


def test_vault_check_accepts_a_bucket_with_object_lock(
    ceph_cluster: CephCluster, locked_bucket: str, tmp_path: Path
) -> None:
    config = cluster_config(ceph_cluster, tmp_path, locked_bucket)
    done = vault_check(config)
    assert done.returncode == 0, done.stderr
    assert f"vault bucket {locked_bucket} at {ceph_cluster.endpoint} keeps evidence" in done.stdout
    assert "delete was refused (AccessDenied)" in done.stdout

    as_json = vault_check(config, "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["usable"] is True
    assert report["bucket"] == locked_bucket
    assert (report["versioning"], report["object_lock"]) == ("Enabled", "Enabled")


def test_vault_check_refuses_a_bucket_without_object_lock(ceph_cluster: CephCluster, tmp_path: Path) -> None:
    plain = ceph_cluster.create_bucket(object_lock=False)
    done = vault_check(cluster_config(ceph_cluster, tmp_path, plain))
    assert_one_line_refusal(
        done, "vault check failed", plain, ceph_cluster.endpoint, "Object Lock is not enabled"
    )
    assert ceph_cluster.client().list_objects_v2(Bucket=plain).get("KeyCount") == 0


@pytest.mark.parametrize(
    ("wrong", "expected"),
    [
        ("secret", "the secret access key does not match the access key id"),
        ("access_key_id", "the access key id is unknown to the endpoint"),
    ],
)
def test_vault_check_refuses_wrong_credentials(
    ceph_cluster: CephCluster, locked_bucket: str, tmp_path: Path, wrong: str, expected: str
) -> None:
    assert ceph_cluster.user is not None
    config = write_config(
        tmp_path,
        endpoint=ceph_cluster.endpoint,
        bucket=locked_bucket,
        access_key_id="NOSUCHKEY" if wrong == "access_key_id" else ceph_cluster.user.access_key_id,
        secret=secret_file(
            tmp_path, "not-the-secret" if wrong == "secret" else ceph_cluster.user.secret_access_key
        ),
    )
    assert_one_line_refusal(vault_check(config), locked_bucket, ceph_cluster.endpoint, expected)


def test_vault_check_refuses_an_unreachable_endpoint(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    config = write_config(
        tmp_path, endpoint=endpoint, bucket="evidence", access_key_id="AK", secret=secret_file(tmp_path, "s")
    )
    done = vault_check(config)
    assert_one_line_refusal(done, f"vault endpoint {endpoint} is unreachable", "evidence")


def test_vault_check_refuses_a_secret_file_others_can_read(tmp_path: Path) -> None:
    secret = secret_file(tmp_path, "s", mode=0o644)
    config = write_config(
        tmp_path, endpoint="http://127.0.0.1:9", bucket="evidence", access_key_id="AK", secret=secret
    )
    done = vault_check(config)
    assert_one_line_refusal(
        done,
        f"vault.secret_access_key_file {secret}: must not be accessible to group or others, has mode 0644",
    )


def test_vault_check_names_the_keys_a_config_without_a_vault_lacks(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[vault]\nbucket = 'evidence'\n", encoding="utf-8")
    assert_one_line_refusal(vault_check(config), f"config {config}: vault: set endpoint, access_key_id")
