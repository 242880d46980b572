"""The in-memory adapter: the same contract without files, for callers' unit tests.

Guarantees: digests, deduplication, resume by key, disk full (with `capacity`) and seals behave as in the
file adapter; paths are virtual (under `root`) and never touched.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import blake3 as blake3_module

from store.errors import DiskFullError, ExistingObjectCorruptError, ObjectMissing, SourceSizeError
from store.objects.interface import (
    KeepKeys,
    MiB,
    ObjectProblem,
    ObjectStore,
    PartialCopy,
    ProblemKind,
    PutResult,
    Reconciled,
    Seal,
    check_digest,
    keeper,
    object_relpath,
)
from store.objects.pipeline import resume_point


@dataclass(slots=True)
class _MemoryObject:
    data: bytes
    sha256: str
    sealed: bool = True


@dataclass(slots=True)
class _MemoryPartial:
    data: bytearray
    durable: int = 0
    written_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    stamp: str | None = None


class MemoryObjectStore(ObjectStore):
    """The same contract in memory, for callers' unit tests: digests, dedup, resume by key, disk full
    (with `capacity`), seals. Paths are virtual (under `root`) and never touched."""

    def __init__(
        self,
        *,
        capacity: int | None = None,
        fsync_interval: int = 256 * MiB,
        chunk_size: int = 4 * MiB,
        seal: Seal = Seal.IMMUTABLE,
        root: Path = Path("memory"),
    ) -> None:
        self.root = root
        self.capacity = capacity
        self.fsync_interval = fsync_interval
        self.chunk_size = chunk_size
        self.seal_mode = seal
        self._objects: dict[str, _MemoryObject] = {}
        self._partials: dict[str, _MemoryPartial] = {}
        self._lock = threading.RLock()

    def _used(self) -> int:
        return sum(len(o.data) for o in self._objects.values()) + sum(
            len(p.data) for p in self._partials.values()
        )

    def free_bytes(self) -> int:
        with self._lock:
            return (self.capacity - self._used()) if self.capacity is not None else 2**62

    def path_for(self, blake3_hex: str) -> Path:
        return self.root / object_relpath(blake3_hex)

    def exists(self, blake3_hex: str) -> bool:
        with self._lock:
            return check_digest(blake3_hex) in self._objects

    def open(self, blake3_hex: str) -> BinaryIO:
        with self._lock:
            stored = self._objects.get(check_digest(blake3_hex))
        if stored is None:
            raise ObjectMissing(blake3=blake3_hex, path=self.path_for(blake3_hex))
        return io.BytesIO(stored.data)

    def put(
        self,
        source: BinaryIO,
        *,
        resume_key: str | None = None,
        expected_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        source_stamp: str | None = None,
    ) -> PutResult:
        with self._lock:
            partial = self._partials.pop(resume_key, None) if resume_key is not None else None
            if partial is None or partial.stamp != source_stamp:
                partial = _MemoryPartial(bytearray(), stamp=source_stamp)
            del partial.data[partial.durable :]
            if partial.durable:
                prefix = partial.data
                partial.durable = resume_point(
                    source,
                    partial.durable,
                    key=resume_key,
                    expected_size=expected_size,
                    read_partial=lambda offset, length: bytes(prefix[offset : offset + length]),
                )
                del partial.data[partial.durable :]
            if resume_key is not None:
                self._partials[resume_key] = partial
            resumed = partial.durable
            if expected_size is not None and self.free_bytes() < expected_size - resumed:
                self._forget(resume_key)
                raise DiskFullError(
                    root=self.root,
                    reason="not enough space for the announced size",
                    free_bytes=self.free_bytes(),
                    written=0,
                )
            try:
                self._fill(source, partial, progress)
            except DiskFullError:
                self._forget(resume_key)
                raise
            except Exception:
                partial.durable = len(partial.data)  # what the source gave us is resumable
                raise
            self._forget(resume_key)
            data = bytes(partial.data)
            if expected_size is not None and len(data) != expected_size:
                raise SourceSizeError(key=resume_key, actual=len(data), expected=expected_size)
            blake3_hex = str(blake3_module.blake3(data).hexdigest())
            sha256_hex = hashlib.sha256(data).hexdigest()
            existing = self._objects.get(blake3_hex)
            if existing is not None:
                if existing.data != data or existing.sha256 != sha256_hex:
                    raise ExistingObjectCorruptError(
                        path=self.path_for(blake3_hex), detail="stored bytes differ"
                    )
                existing.sealed = True
            else:
                self._objects[blake3_hex] = _MemoryObject(data, sha256_hex)
            return PutResult(
                blake3_hex,
                sha256_hex,
                len(data),
                self.path_for(blake3_hex),
                self.seal_mode,
                deduplicated=existing is not None,
                resumed_from=resumed,
                read_back_verified=True,
            )

    def _fill(
        self, source: BinaryIO, partial: _MemoryPartial, progress: Callable[[int], None] | None
    ) -> None:
        while chunk := source.read(self.chunk_size):
            if self.capacity is not None and self._used() + len(chunk) > self.capacity:
                free = self.capacity - self._used()
                raise DiskFullError(
                    root=self.root, reason="ENOSPC", free_bytes=free, written=len(partial.data)
                )
            partial.data += chunk
            partial.written_at = datetime.now(UTC)
            if len(partial.data) - partial.durable >= self.fsync_interval:
                partial.durable = len(partial.data)
            if progress is not None:
                progress(len(partial.data))

    def _forget(self, key: str | None) -> None:
        if key is not None:
            self._partials.pop(key, None)

    def remove(self, blake3_hex: str) -> None:
        """The only removal path. Only the retention purge may call this."""
        with self._lock:
            if self._objects.pop(check_digest(blake3_hex), None) is None:
                raise ObjectMissing(blake3=blake3_hex, path=self.path_for(blake3_hex))

    def damage(self, blake3_hex: str, *, data: bytes | None = None, unseal: bool = False) -> None:
        """Test aid for callers: change or unseal a stored object the way an attacker or a bad disk would."""
        with self._lock:
            stored = self._objects[check_digest(blake3_hex)]
            if data is not None:
                stored.data = data
            if unseal:
                stored.sealed = False

    def verify_object(
        self, blake3_hex: str, sha256_hex: str, size: int, *, seal: Seal | None = None
    ) -> list[ObjectProblem]:
        with self._lock:
            stored = self._objects.get(check_digest(blake3_hex))
        if stored is None:
            detail = f"{self.path_for(blake3_hex)} does not exist"
            return [ObjectProblem(blake3_hex, ProblemKind.MISSING, detail)]
        problems = []
        if len(stored.data) != size:
            problems.append(
                ObjectProblem(
                    blake3_hex, ProblemKind.SIZE_MISMATCH, f"{len(stored.data)} bytes, expected {size}"
                )
            )
        found_blake3 = str(blake3_module.blake3(stored.data).hexdigest())
        if found_blake3 != blake3_hex:
            problems.append(
                ObjectProblem(blake3_hex, ProblemKind.BLAKE3_MISMATCH, f"content hashes to {found_blake3}")
            )
        found_sha256 = hashlib.sha256(stored.data).hexdigest()
        if found_sha256 != sha256_hex:
            problems.append(
                ObjectProblem(
                    blake3_hex, ProblemKind.SHA256_MISMATCH, f"sha256 {found_sha256}, expected {sha256_hex}"
                )
            )
        if not stored.sealed:
            problems.append(ObjectProblem(blake3_hex, ProblemKind.NOT_SEALED, "seal was removed"))
        return problems

    def reconcile(self, keep: KeepKeys) -> Reconciled:
        kept_key = keeper(keep)
        with self._lock:
            kept = tuple(key for key in self._partials if kept_key(key))
            removed = tuple(key for key in self._partials if not kept_key(key))
            for key in removed:
                del self._partials[key]
        return Reconciled(kept, removed)

    def expire_partials(
        self, written_before: datetime, before_remove: Callable[[PartialCopy], None]
    ) -> list[PartialCopy]:
        expired: list[PartialCopy] = []
        with self._lock:  # held by every put for its whole copy: no partial here is being written
            for key, partial in list(self._partials.items()):
                if partial.written_at >= written_before:
                    continue
                copy = PartialCopy(key=key, durable=partial.durable, written_at=partial.written_at)
                before_remove(copy)
                del self._partials[key]
                expired.append(copy)
        return expired
