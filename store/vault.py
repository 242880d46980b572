"""The agency vault: an S3 bucket with Object Lock in compliance mode (AWS S3, Ceph RGW, MinIO).

Objects go under their content address `objects/<aa>/<bb>/<blake3>` with sha256, blake3 and size as
metadata and a COMPLIANCE retention date, so no credential (the station's included) can delete a
locked version or shorten its date before it passes. What this adapter guarantees:
- a put sends only bytes whose BLAKE3, SHA-256 and size match what the caller claims; a local file that
  changed is refused before anything becomes locked under a wrong address;
- every request body carries Content-MD5 (also every multipart part), which the server checks; the
  newer S3 additional checksums are not relied on (Ceph 16 ignores them);
- an object counts as stored only once `confirm` has read its size, metadata and lock back from the
  server, and one already in the bucket is read back and verified rather than sent twice;
- retention dates are only ever extended; a read-back stream is verified against both digests.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Literal

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from store.digests import Digests
from store.errors import IntegrityError, StoreError
from store.objects import object_relpath

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

MiB = 1024 * 1024
S3_MIN_PART_SIZE = 5 * MiB  # S3 and RGW refuse smaller parts except the last
S3_MAX_PARTS = 10_000
COMPLIANCE: Final[Literal["COMPLIANCE"]] = "COMPLIANCE"
PROBE_PREFIX = "probe/"
# What each refusal of the credentials means, in the operator's words.
CREDENTIAL_CODES = {
    "InvalidAccessKeyId": "the access key id is unknown to the endpoint",
    "SignatureDoesNotMatch": "the secret access key does not match the access key id",
    "InvalidToken": "the session token is invalid",
    "ExpiredToken": "the session token has expired",
}
NO_LOCK_CODES = frozenset({"ObjectLockConfigurationNotFoundError", "InvalidRequest"})


class VaultError(StoreError):
    """Root of every error raised by the vault adapter; each names the bucket and the endpoint."""

    template = "vault {bucket} at {endpoint}: {detail}"
    exit_code = 50
    wire_code = "vault"


class VaultUnreachableError(VaultError):
    """No answer from the endpoint (connection refused, DNS, TLS, timeout)."""

    template = "vault endpoint {endpoint} is unreachable (bucket {bucket}): {detail}"
    exit_code = 51
    wire_code = "vault-unreachable"


class VaultCredentialsError(VaultError):
    """The endpoint refused the station's access key or its signature."""

    template = "vault {endpoint} refused the station's access to bucket {bucket}: {detail}"
    exit_code = 52
    wire_code = "vault-credentials"


class VaultBucketError(VaultError):
    """The bucket cannot keep evidence: missing, no versioning, no Object Lock, or a lock that yields."""

    template = "vault bucket {bucket} at {endpoint} is not usable for evidence: {detail}"
    exit_code = 53
    wire_code = "vault-bucket"


class VaultRetentionError(VaultError):
    """A retention date would be shortened; compliance mode only extends, and so does the station."""

    template = (
        "vault {bucket} at {endpoint}: {key} is retained until {current}; "
        "refusing to shorten it to {requested}"
    )
    exit_code = 54
    wire_code = "vault-retention"


class VaultObjectMissingError(VaultError):
    """No version of the object is in the bucket."""

    template = "vault {bucket} at {endpoint}: {key} is not in the bucket"
    exit_code = 55
    wire_code = "vault-object-missing"


class VaultIntegrityError(IntegrityError, VaultError):
    """Bytes, metadata or lock in the vault (or the local file being sent) do not match what was
    recorded. An `IntegrityError` (its exit code): never swallowed by a broad handler."""

    template = "integrity: vault {bucket} at {endpoint}: {key}: {detail}"
    wire_code = "vault-integrity"


@dataclass(frozen=True)
class VaultSettings:
    """Where the vault is and how to talk to it. The secret is passed in, never read from here."""

    endpoint: str
    bucket: str
    region: str
    access_key_id: str
    secret_access_key: str
    part_size: int = 64 * MiB
    multipart_threshold: int = 64 * MiB
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.part_size < S3_MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {S3_MIN_PART_SIZE} bytes")

    def __repr__(self) -> str:  # the secret never reaches a log line or a traceback
        return f"VaultSettings(endpoint={self.endpoint!r}, bucket={self.bucket!r}, region={self.region!r})"


@dataclass(frozen=True)
class VaultObject:
    """One object version as the server reports it."""

    key: str
    version_id: str
    size: int
    sha256: str
    blake3: str
    lock_mode: str | None
    retain_until: datetime | None
    legal_hold: bool


@dataclass(frozen=True)
class PartialUpload:
    """An open multipart upload as a caller persists it: its id and the parts acknowledged so far
    as (part number, MD5 hex). The server's own list is the truth on resume; this only names it."""

    upload_id: str
    parts: tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class CheckReport:
    """What `Vault.check` proved about the bucket."""

    endpoint: str
    bucket: str
    versioning: str
    object_lock: str
    probe_key: str
    probe_retain_until: datetime
    delete_refused: str
    shorten_refused: str


def object_key(blake3_hex: str) -> str:
    """The content address in the bucket: the local store's own path (a bad digest is refused)."""
    return object_relpath(blake3_hex).as_posix()


def _md5_b64(data: bytes | memoryview) -> str:
    # Content-MD5 is a transport check the server verifies, not a security digest.
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} refused: retention dates must carry a zone")
    return value.astimezone(UTC)


def _seconds(value: datetime) -> datetime:
    """S3 headers carry whole seconds; compare dates at that precision."""
    return _utc(value).replace(microsecond=0)


@dataclass(frozen=True)
class _Upload:
    """One object on its way: its address, what its bytes must hash to, and its lock headers."""

    key: str
    blake3_hex: str
    sha256_hex: str
    size: int
    lock: dict[str, Any]

    @property
    def metadata(self) -> dict[str, str]:
        return {"sha256": self.sha256_hex, "blake3": self.blake3_hex, "size": str(self.size)}


def _error_code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


class Vault:
    """The S3 Object Lock adapter. Thread-safe as boto3 clients are; one per replicator thread is fine."""

    def __init__(self, settings: VaultSettings, client: S3Client | None = None) -> None:
        self.settings = settings
        self.client: S3Client = client or boto3.client(
            "s3",
            endpoint_url=settings.endpoint,
            region_name=settings.region,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            config=BotoConfig(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                retries={"max_attempts": settings.max_attempts, "mode": "standard"},
                # Content-MD5 is sent explicitly; trailing CRC checksums break RGW 16's chunked uploads.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    # -- errors -------------------------------------------------------------------------------------

    def _facts(self) -> dict[str, str]:
        return {"bucket": self.settings.bucket, "endpoint": self.settings.endpoint}

    def _translate(self, error: Exception, doing: str, key: str | None = None) -> VaultError:
        """One clear error for a boto failure, naming what was being done."""
        facts = self._facts()
        if isinstance(error, ClientError):
            code = _error_code(error)
            message = error.response.get("Error", {}).get("Message") or code
            if code in CREDENTIAL_CODES:
                return VaultCredentialsError(
                    **facts, code=code, detail=f"{doing}: {CREDENTIAL_CODES[code]} ({code})"
                )
            if code == "AccessDenied":
                return VaultCredentialsError(**facts, code=code, detail=f"{doing}: access denied ({message})")
            if code == "NoSuchBucket":
                return VaultBucketError(**facts, code=code, detail="the bucket does not exist")
            if code in {"NoSuchKey", "404", "NoSuchVersion"} and key is not None:
                return VaultObjectMissingError(**facts, code=code, key=key)
            return VaultError(**facts, code=code, detail=f"{doing}: {code}: {message}")
        if isinstance(error, BotoConnectionError | HTTPClientError):
            return VaultUnreachableError(**facts, detail=f"{doing}: {error}")
        return VaultError(**facts, detail=f"{doing}: {error}")

    @contextlib.contextmanager
    def _s3(self, doing: str, key: str | None = None) -> Iterator[None]:
        """Run S3 calls; a boto failure becomes one `VaultError` naming what was being done."""
        try:
            yield
        except (ClientError, BotoCoreError) as error:
            raise self._translate(error, doing, key) from None

    # -- put ----------------------------------------------------------------------------------------

    def put(
        self,
        path: Path,
        *,
        blake3_hex: str,
        sha256_hex: str,
        size: int,
        retain_until: datetime,
        legal_hold: bool = False,
        resume: PartialUpload | None = None,
        on_part: Callable[[PartialUpload], None] | None = None,
        pace: Callable[[int], None] | None = None,
    ) -> VaultObject:
        """Send a stored file under its content address, locked in compliance mode until `retain_until`.

        An object already in the vault is not sent again: its metadata is checked and its bytes are
        read back against both digests (metadata alone is never proof), then its retention is extended
        to `retain_until` when shorter. The result is confirmed from the server.

        A multipart upload that fails (other than on integrity) is left open for `resume`: `on_part`
        is told after each part the server acknowledged, and a later put given that state sends only
        the parts the server does not hold with the same MD5. `pace(n)` is called before `n` bytes
        are sent (bandwidth limits; it may raise to stop, leaving the upload resumable).
        """
        key = object_key(blake3_hex)
        until = _utc(retain_until)
        existing = self._head_or_none(key)
        if existing is not None:
            self._check_content(existing, sha256_hex=sha256_hex, blake3_hex=blake3_hex, size=size)
            for _ in self.stream(blake3_hex, sha256_hex=sha256_hex, size=size):
                pass
            if existing.retain_until is None or _seconds(existing.retain_until) < _seconds(until):
                self.extend_retention(blake3_hex, until)
            if legal_hold and not existing.legal_hold:
                self.set_legal_hold(blake3_hex, on=True)
            return self.confirm(blake3_hex, sha256_hex=sha256_hex, size=size, retain_until=until)
        upload = _Upload(
            key=key,
            blake3_hex=blake3_hex,
            sha256_hex=sha256_hex,
            size=size,
            lock={
                "ObjectLockMode": COMPLIANCE,
                "ObjectLockRetainUntilDate": until,
                "ObjectLockLegalHoldStatus": "ON" if legal_hold else "OFF",
            },
        )
        with path.open("rb") as source:
            if size > self.settings.multipart_threshold:
                version = self._put_multipart(source, upload, resume=resume, on_part=on_part, pace=pace)
                # RGW 16 drops the lock headers of a multipart upload: lock the completed version now.
                self._lock_version(key, version, until=until, legal_hold=legal_hold)
            else:
                self._put_single(source, upload, pace=pace)
        return self.confirm(blake3_hex, sha256_hex=sha256_hex, size=size, retain_until=until)

    def _refuse_local(self, upload: _Upload, digests: Digests) -> None:
        """Refuse to lock bytes that are not what the caller claims (a local file that changed)."""
        mismatch = digests.matches(upload.blake3_hex, upload.sha256_hex, upload.size)
        if mismatch:
            raise VaultIntegrityError(
                **self._facts(),
                key=upload.key,
                detail=f"the local file read as {mismatch}; nothing was locked",
            )

    def _put_single(self, source: BinaryIO, upload: _Upload, *, pace: Callable[[int], None] | None) -> None:
        body = source.read(upload.size + 1)
        digests = Digests()
        digests.update(body)
        self._refuse_local(upload, digests)
        if pace is not None:
            pace(len(body))
        with self._s3(f"put {upload.key}", upload.key):
            self.client.put_object(
                Bucket=self.settings.bucket,
                Key=upload.key,
                Body=body,
                ContentMD5=_md5_b64(body),
                ContentLength=upload.size,
                Metadata=upload.metadata,
                **upload.lock,
            )

    def _part_size(self, size: int) -> int:
        part = self.settings.part_size
        while -(-size // part) > S3_MAX_PARTS:
            part *= 2
        return part

    def _server_parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]] | None:
        """The parts the server holds for an open upload (number -> (MD5 hex, size)), or None when
        the upload is gone (completed, aborted or expired)."""
        held: dict[int, tuple[str, int]] = {}
        marker = 0
        while True:
            try:
                with self._s3(f"list parts of {key}", key):
                    answer = self.client.list_parts(
                        Bucket=self.settings.bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker
                    )
            except VaultError as error:
                if error.facts.get("code") in {"NoSuchUpload", "NoSuchKey", "404"}:
                    return None
                raise
            for part in answer.get("Parts", []):
                held[part["PartNumber"]] = (part["ETag"].strip('"'), part["Size"])
            if not answer.get("IsTruncated"):
                return held
            marker = answer.get("NextPartNumberMarker", marker)

    def _start_multipart(self, upload: _Upload) -> str:
        with self._s3(f"start multipart upload of {upload.key}", upload.key):
            return self.client.create_multipart_upload(
                Bucket=self.settings.bucket, Key=upload.key, Metadata=upload.metadata, **upload.lock
            )["UploadId"]

    def _put_multipart(
        self,
        source: BinaryIO,
        upload: _Upload,
        *,
        resume: PartialUpload | None = None,
        on_part: Callable[[PartialUpload], None] | None = None,
        pace: Callable[[int], None] | None = None,
    ) -> str:
        """Upload in parts, each with its Content-MD5, resuming `resume` where the server still holds
        it; returns the new version's id. Every byte is read and hashed locally, sent or not."""
        bucket, key = self.settings.bucket, upload.key
        held: dict[int, tuple[str, int]] = {}
        upload_id = None
        if resume is not None:
            found = self._server_parts(key, resume.upload_id)
            if found is not None:
                upload_id, held = resume.upload_id, found
        if upload_id is None:
            upload_id = self._start_multipart(upload)
        acknowledged: list[tuple[int, str]] = []
        if on_part is not None:
            on_part(PartialUpload(upload_id, ()))
        digests = Digests()
        part_size = self._part_size(upload.size)
        while (chunk := source.read(part_size)) and digests.size <= upload.size:
            digests.update(chunk)
            number = len(acknowledged) + 1
            md5 = hashlib.md5(chunk, usedforsecurity=False)
            if held.get(number) == (md5.hexdigest(), len(chunk)):
                acknowledged.append((number, md5.hexdigest()))
                continue
            if pace is not None:
                pace(len(chunk))
            with self._s3(f"upload part {number} of {key}", key):
                answer = self.client.upload_part(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=chunk,
                    ContentMD5=base64.b64encode(md5.digest()).decode("ascii"),
                    ContentLength=len(chunk),
                )
            acknowledged.append((number, answer["ETag"].strip('"')))
            if on_part is not None:
                on_part(PartialUpload(upload_id, tuple(acknowledged)))
        try:
            # The whole file is checked before completion: a wrong object must never become locked.
            self._refuse_local(upload, digests)
        except VaultIntegrityError:
            self._abort(key, upload_id)
            raise
        parts: list[CompletedPartTypeDef] = [
            {"PartNumber": number, "ETag": f'"{etag}"'} for number, etag in acknowledged
        ]
        with self._s3(f"complete multipart upload of {key}", key):
            version: str = self.client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            ).get("VersionId", "")
        return version

    def _lock_version(self, key: str, version: str, *, until: datetime, legal_hold: bool) -> None:
        """Lock a version the server completed without its lock (`confirm` then proves it)."""
        bucket = self.settings.bucket
        with self._s3(f"lock {key} version {version}", key):
            head = self.client.head_object(Bucket=bucket, Key=key, VersionId=version)
            reported = head.get("ObjectLockRetainUntilDate")
            if (
                head.get("ObjectLockMode") != COMPLIANCE
                or reported is None
                or _seconds(reported) < _seconds(until)
            ):
                self.client.put_object_retention(
                    Bucket=bucket,
                    Key=key,
                    VersionId=version,
                    Retention={"Mode": COMPLIANCE, "RetainUntilDate": until},
                )
            if legal_hold and head.get("ObjectLockLegalHoldStatus") != "ON":
                self.client.put_object_legal_hold(
                    Bucket=bucket, Key=key, VersionId=version, LegalHold={"Status": "ON"}
                )

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.settings.bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError):
            # The server expires abandoned uploads by its lifecycle; the original error is the one to see.
            return

    # -- confirm ------------------------------------------------------------------------------------

    def head(self, blake3_hex: str, *, version_id: str | None = None) -> VaultObject:
        """The newest version of an object as the server reports it (or `version_id`, which a delete
        marker or a newer version over it does not hide)."""
        key = object_key(blake3_hex)
        found = self._head_or_none(key, version_id)
        if found is None:
            raise VaultObjectMissingError(**self._facts(), key=key)
        return found

    def _head_or_none(self, key: str, version_id: str | None = None) -> VaultObject | None:
        try:
            with self._s3(f"head {key}", key):
                if version_id:
                    answer = self.client.head_object(
                        Bucket=self.settings.bucket, Key=key, VersionId=version_id
                    )
                else:
                    answer = self.client.head_object(Bucket=self.settings.bucket, Key=key)
        except VaultObjectMissingError:
            return None
        metadata = answer.get("Metadata", {})
        until = answer.get("ObjectLockRetainUntilDate")
        return VaultObject(
            key=key,
            version_id=answer.get("VersionId", ""),
            size=answer["ContentLength"],
            sha256=metadata.get("sha256", ""),
            blake3=metadata.get("blake3", ""),
            lock_mode=answer.get("ObjectLockMode"),
            retain_until=_utc(until) if until is not None else None,
            legal_hold=answer.get("ObjectLockLegalHoldStatus") == "ON",
        )

    def _check_content(self, found: VaultObject, *, sha256_hex: str, blake3_hex: str, size: int) -> None:
        reported = (found.blake3, found.sha256, found.size)
        if reported != (blake3_hex, sha256_hex, size):
            raise VaultIntegrityError(
                **self._facts(),
                key=found.key,
                detail=(
                    f"the server reports blake3 {found.blake3 or '-'}, sha256 {found.sha256 or '-'}, "
                    f"{found.size} bytes; expected {blake3_hex}, {sha256_hex}, {size}"
                ),
            )

    def confirm(
        self,
        blake3_hex: str,
        *,
        sha256_hex: str,
        size: int,
        retain_until: datetime | None = None,
        version_id: str | None = None,
    ) -> VaultObject:
        """Prove from the server that the object (its newest version, or `version_id`) is there with
        this content, locked in compliance mode, and (when given) retained at least until `retain_until`."""
        found = self.head(blake3_hex, version_id=version_id)
        self._check_content(found, sha256_hex=sha256_hex, blake3_hex=blake3_hex, size=size)
        if found.lock_mode != COMPLIANCE or found.retain_until is None:
            raise VaultIntegrityError(
                **self._facts(),
                key=found.key,
                detail=f"lock is {found.lock_mode or 'none'}, not COMPLIANCE with a retention date",
            )
        if retain_until is not None and _seconds(found.retain_until) < _seconds(retain_until):
            raise VaultIntegrityError(
                **self._facts(),
                key=found.key,
                detail=(
                    f"retained until {found.retain_until.isoformat()}, "
                    f"earlier than {_utc(retain_until).isoformat()}"
                ),
            )
        return found

    # -- lock changes -------------------------------------------------------------------------------

    def extend_retention(self, blake3_hex: str, until: datetime) -> datetime:
        """Move the compliance retention date later; an earlier date is refused here, before the
        server would refuse it too. Returns the date now in force."""
        found = self.head(blake3_hex)
        wanted = _utc(until)
        if found.retain_until is not None and _seconds(wanted) <= _seconds(found.retain_until):
            if _seconds(wanted) == _seconds(found.retain_until):
                return found.retain_until
            raise VaultRetentionError(
                **self._facts(),
                key=found.key,
                current=found.retain_until.isoformat(),
                requested=wanted.isoformat(),
            )
        with self._s3(f"extend retention of {found.key}", found.key):
            self.client.put_object_retention(
                Bucket=self.settings.bucket,
                Key=found.key,
                VersionId=found.version_id,
                Retention={"Mode": COMPLIANCE, "RetainUntilDate": wanted},
            )
        return wanted

    def set_legal_hold(self, blake3_hex: str, *, on: bool) -> None:
        """Turn the object's legal hold on (nothing deletes it, whatever its date) or off."""
        found = self.head(blake3_hex)
        with self._s3(f"set legal hold of {found.key}", found.key):
            self.client.put_object_legal_hold(
                Bucket=self.settings.bucket,
                Key=found.key,
                VersionId=found.version_id,
                LegalHold={"Status": "ON" if on else "OFF"},
            )

    # -- read back ----------------------------------------------------------------------------------

    def stream(
        self,
        blake3_hex: str,
        *,
        sha256_hex: str,
        size: int,
        chunk_size: int = 4 * MiB,
        version_id: str | None = None,
    ) -> Iterator[bytes]:
        """The object's bytes in chunks (the newest version, or `version_id`). Both digests and the
        size are checked as it is read: the last step raises `VaultIntegrityError` when they differ,
        so a consumer must read to the end before trusting what it got."""
        key = object_key(blake3_hex)
        with self._s3(f"read {key}", key):
            if version_id:
                answer = self.client.get_object(Bucket=self.settings.bucket, Key=key, VersionId=version_id)
            else:
                answer = self.client.get_object(Bucket=self.settings.bucket, Key=key)
            body = answer["Body"]
        digests = Digests()
        try:
            with self._s3(f"read {key}", key):
                for chunk in body.iter_chunks(chunk_size):
                    digests.update(chunk)
                    yield chunk
        finally:
            body.close()
        mismatch = digests.matches(blake3_hex, sha256_hex, size)
        if mismatch:
            raise VaultIntegrityError(**self._facts(), key=key, detail=f"read back as {mismatch}")

    # -- records (the audit chain's segments and checkpoints) ----------------------------------------

    def put_record(self, key: str, data: bytes, *, retain_until: datetime) -> VaultObject:
        """Store a small record under `key`, locked in compliance mode, once. A record already there
        must hold exactly these bytes (its SHA-256 is compared, then its bytes are read back): different
        bytes under the same key mean one side was rewritten, a `VaultIntegrityError`."""
        sha256_hex = hashlib.sha256(data).hexdigest()
        until = _utc(retain_until)
        existing = self._head_or_none(key)
        if existing is None:
            with self._s3(f"put {key}", key):
                self.client.put_object(
                    Bucket=self.settings.bucket,
                    Key=key,
                    Body=data,
                    ContentMD5=_md5_b64(data),
                    ContentLength=len(data),
                    Metadata={"sha256": sha256_hex, "size": str(len(data))},
                    ObjectLockMode=COMPLIANCE,
                    ObjectLockRetainUntilDate=until,
                )
        stored = self.get_record(key)
        if stored != data:
            raise VaultIntegrityError(
                **self._facts(),
                key=key,
                detail=f"the vault holds other bytes (sha256 {hashlib.sha256(stored).hexdigest()}) "
                f"than the station's {sha256_hex}",
            )
        found = self._head_or_none(key)
        if found is None or found.lock_mode != COMPLIANCE or found.retain_until is None:
            raise VaultIntegrityError(
                **self._facts(), key=key, detail="record is not locked in COMPLIANCE mode"
            )
        return found

    def get_record(self, key: str) -> bytes:
        with self._s3(f"read {key}", key):
            body = self.client.get_object(Bucket=self.settings.bucket, Key=key)["Body"]
            try:
                return body.read()
            finally:
                body.close()

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under `prefix`, sorted."""
        keys: list[str] = []
        with self._s3(f"list {prefix}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.settings.bucket, Prefix=prefix
            ):
                keys += [item["Key"] for item in page.get("Contents", []) if "Key" in item]
        return sorted(keys)

    # -- check --------------------------------------------------------------------------------------

    def check(self, *, now: datetime, probe_retention: timedelta = timedelta(hours=1)) -> CheckReport:
        """Prove the bucket keeps evidence: versioning on, Object Lock enabled, and a probe locked in
        compliance mode that these very credentials can neither delete nor shorten.

        The probe stays in the bucket until its short retention passes (compliance mode allows
        nothing else); a lifecycle rule on `probe/` may expire it then."""
        facts = self._facts()
        bucket = self.settings.bucket
        with self._s3("read bucket versioning"):
            versioning: str = self.client.get_bucket_versioning(Bucket=bucket).get("Status", "")
        try:
            with self._s3("read Object Lock configuration"):
                lock = self.client.get_object_lock_configuration(Bucket=bucket)
        except VaultError as error:
            if error.facts.get("code") not in NO_LOCK_CODES:
                raise
            raise VaultBucketError(
                **facts, detail="Object Lock is not enabled (create the bucket with Object Lock)"
            ) from None
        object_lock = lock.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled", "")
        if object_lock != "Enabled":
            raise VaultBucketError(**facts, detail=f"Object Lock is {object_lock or 'not enabled'}")
        if versioning != "Enabled":
            raise VaultBucketError(**facts, detail=f"versioning is {versioning or 'off'}, not Enabled")
        probe_key = f"{PROBE_PREFIX}{_utc(now).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex}"
        until = _seconds(_utc(now) + probe_retention)
        body = b"ingestd vault check probe\n"
        with self._s3(f"put probe {probe_key}", probe_key):
            version = self.client.put_object(
                Bucket=bucket,
                Key=probe_key,
                Body=body,
                ContentMD5=_md5_b64(body),
                ObjectLockMode=COMPLIANCE,
                ObjectLockRetainUntilDate=until,
            ).get("VersionId", "")
        if not version:
            raise VaultBucketError(**facts, detail=f"probe {probe_key} got no version id")
        delete_refused = self._must_refuse(
            probe_key,
            "a delete of the locked probe version",
            lambda: self.client.delete_object(Bucket=bucket, Key=probe_key, VersionId=version),
        )
        shorten_refused = self._must_refuse(
            probe_key,
            "shortening the probe's compliance retention",
            lambda: self.client.put_object_retention(
                Bucket=bucket,
                Key=probe_key,
                VersionId=version,
                Retention={"Mode": COMPLIANCE, "RetainUntilDate": until - probe_retention / 2},
            ),
        )
        with self._s3(f"head probe {probe_key}", probe_key):
            head = self.client.head_object(Bucket=bucket, Key=probe_key, VersionId=version)
        reported = head.get("ObjectLockRetainUntilDate")
        mode: str | None = head.get("ObjectLockMode")
        if mode != COMPLIANCE or reported is None or _seconds(reported) != until:
            raise VaultBucketError(
                **facts,
                detail=(
                    f"probe {probe_key} reports lock {mode or 'none'} until "
                    f"{reported.isoformat() if reported else '-'}, not COMPLIANCE until {until.isoformat()}"
                ),
            )
        return CheckReport(
            endpoint=self.settings.endpoint,
            bucket=bucket,
            versioning=versioning,
            object_lock=object_lock,
            probe_key=probe_key,
            probe_retain_until=until,
            delete_refused=delete_refused,
            shorten_refused=shorten_refused,
        )

    def _must_refuse(self, probe_key: str, what: str, attempt: Callable[[], object]) -> str:
        """Run an attempt the server must refuse; return its refusal code, else the bucket is unfit."""
        try:
            with self._s3(what, probe_key):
                attempt()
        except VaultError as error:
            if error.facts.get("code") != "AccessDenied":
                raise
            return "AccessDenied"
        raise VaultBucketError(
            **self._facts(), detail=f"{what} ({probe_key}) was allowed with the station's credentials"
        )
