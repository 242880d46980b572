"""The object-store interface and its value types.

Guarantees of every adapter:
- An object named `<blake3>` holds exactly the bytes that BLAKE3 names, and `put` returns their SHA-256 too.
- `put` returns only after the copy is durable and, with read-back on, re-read from disk and compared.
- A stored object is sealed (mode 0444, plus the immutable attribute where the filesystem and capability
  allow it) and nothing but `remove` deletes it. Only the retention purge and vault eviction call `remove`.
- A crash or a failed source leaves at most a partial copy, resumable by its key or removed by `reconcile`.
  A keyed partial copy that nobody resumes is removed by `expire_partials` once it is old enough.
- A digest that is not 64 lowercase hex characters never becomes part of a path.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Final, NamedTuple

from store.digests import Digests
from store.errors import InvalidDigestError
from store.objects.pipeline import RingPool, SourceFailedError, pump, source_reader

MiB: Final = 1024 * 1024
_HEX64: Final = re.compile(r"[0-9a-f]{64}")


class Seal(enum.StrEnum):
    """How a stored object is protected. Values match the catalog's `Seal` column."""

    IMMUTABLE = "immutable"  # mode 0444 and the filesystem immutable attribute
    READ_ONLY = "read-only"  # mode 0444 only: the filesystem or capability refused the attribute


@dataclass(frozen=True, slots=True)
class PutResult:
    """A stored object. `copy_seconds` (the source into a durable partial copy) and `read_back_seconds`
    (re-reading it from the medium) are the wall time of those two passes, 0 where a pass did not run,
    so a slow ingest shows whether the source or the store's disk held it. `unread` says why a read-back
    that ran proves nothing (it read memory, not the medium); `read_back_verified` is then False."""

    blake3: str
    sha256: str
    size: int
    path: Path
    seal: Seal
    deduplicated: bool
    resumed_from: int
    read_back_verified: bool
    copy_seconds: float = 0.0
    read_back_seconds: float = 0.0
    unread: str | None = None


class ExpectedObject(NamedTuple):
    """What the catalog says an object is."""

    blake3: str
    sha256: str
    size: int


class ProblemKind(enum.StrEnum):
    MISSING = "missing"
    SIZE_MISMATCH = "size-mismatch"
    BLAKE3_MISMATCH = "blake3-mismatch"
    SHA256_MISMATCH = "sha256-mismatch"
    NOT_SEALED = "not-sealed"
    UNREAD = "unread"  # some of its pages stayed in memory: the check could not read them from the medium


@dataclass(frozen=True, slots=True)
class ObjectProblem:
    blake3: str
    kind: ProblemKind
    detail: str


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What `reconcile` removed. Paths are empty for adapters without files."""

    kept_keys: tuple[str, ...]
    removed_keys: tuple[str, ...]
    removed_paths: tuple[Path, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class PartialCopy:
    """A keyed copy in progress or interrupted: its resume key, the bytes known durable, and when it was
    last written (UTC)."""

    key: str
    durable: int
    written_at: datetime


ScrubProgress = Callable[[int, int, int], None]  # objects done, objects total, bytes done
KeepKeys = Callable[[str], bool] | Collection[str]


def check_digest(value: str) -> str:
    """Refuse anything but a lowercase 64-hex BLAKE3 before it becomes part of a path."""
    if not isinstance(value, str) or _HEX64.fullmatch(value) is None:
        raise InvalidDigestError(value=value)
    return value


def object_relpath(blake3_hex: str) -> Path:
    """`objects/<aa>/<bb>/<blake3>`: two fan-out levels keep directories small at millions of objects."""
    check_digest(blake3_hex)
    return Path("objects", blake3_hex[:2], blake3_hex[2:4], blake3_hex)


def keeper(keep: KeepKeys) -> Callable[[str], bool]:
    if callable(keep):
        return keep
    kept = frozenset(keep)
    return kept.__contains__


class ObjectStore(abc.ABC):
    """Write-once content-addressed storage of evidence files. See the module docstring for guarantees."""

    @abc.abstractmethod
    def put(
        self,
        source: BinaryIO,
        *,
        resume_key: str | None = None,
        expected_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        source_stamp: str | None = None,
    ) -> PutResult:
        """Copy `source` from its current position to EOF into the store, hashing in the same pass.

        With `resume_key`, an interrupted copy is kept and a later put with the same key continues from
        its last durable offset (the source must then be seekable, else it restarts from 0). It continues
        only if the source still looks like the one the partial came from: the same `source_stamp` (what
        the caller knows of the source's version, e.g. size and mtime) and the same bytes at sampled
        offsets of the prefix, the last durable block included; otherwise the partial is discarded and
        the copy starts from 0. `progress` receives the number of bytes stored so far.
        """

    def digest(self, source: BinaryIO, *, progress: Callable[[int], None] | None = None) -> ExpectedObject:
        """Hash `source` from its current position to EOF as `put` does, storing nothing: how a caller
        proves that the bytes it reads now are those of an object it believes stored."""
        digests = Digests()
        done = 0

        def count(view: memoryview) -> None:
            nonlocal done
            done += len(view)
            if progress is not None:
                progress(done)

        with self._borrowed_ring() as ring:
            try:
                with source_reader(source) as fill:
                    size = pump(ring, fill, count, digests)
            except SourceFailedError as failed:
                raise failed.error from None
        blake3_hex, sha256_hex = digests.hex()
        return ExpectedObject(blake3_hex, sha256_hex, size)

    def _borrowed_ring(self) -> contextlib.AbstractContextManager[list[memoryview]]:
        return RingPool(MiB).borrowed()

    @abc.abstractmethod
    def open(self, blake3_hex: str) -> BinaryIO:
        """Open a stored object for reading; raises ObjectMissing."""

    @abc.abstractmethod
    def path_for(self, blake3_hex: str) -> Path:
        """Where the object with this BLAKE3 lives (whether or not it exists)."""

    @abc.abstractmethod
    def exists(self, blake3_hex: str) -> bool: ...

    @abc.abstractmethod
    def free_bytes(self) -> int: ...

    @abc.abstractmethod
    def remove(self, blake3_hex: str) -> None:
        """Delete a stored object: the only removal path. Only the retention purge (after checking holds)
        and eviction (after the vault confirmed its copy) may call this, each after its audit event."""

    @abc.abstractmethod
    def verify_object(
        self, blake3_hex: str, sha256_hex: str, size: int, *, seal: Seal | None = None
    ) -> list[ObjectProblem]:
        """Re-read one object from its medium and report every way it differs from what is expected.

        `seal` is the seal the object was given (the catalog's record); without it, the seal this store
        gives now is expected, which a file store finds out by writing a probe (a verifier that only
        reads passes `seal`)."""

    @abc.abstractmethod
    def reconcile(self, keep: KeepKeys) -> Reconciled:
        """On start: drop partial copies whose resume key `keep` does not keep, and any temp files."""

    @abc.abstractmethod
    def expire_partials(
        self, written_before: datetime, before_remove: Callable[[PartialCopy], None]
    ) -> list[PartialCopy]:
        """Remove the keyed partial copies last written before `written_before` and return them.

        A partial a put is writing is never touched. `before_remove` runs for each one first, while no put
        can take it (the caller audits the removal there); if it raises, that partial is kept and the
        error propagates.
        """

    def scrub(
        self, entries: Collection[ExpectedObject], progress: ScrubProgress | None = None
    ) -> list[ObjectProblem]:
        """Verify every entry; `progress(done, total, bytes_done)` is called after each object."""
        problems: list[ObjectProblem] = []
        total = len(entries)
        done_bytes = 0
        for done, entry in enumerate(entries, start=1):
            problems.extend(self.verify_object(entry.blake3, entry.sha256, entry.size))
            done_bytes += entry.size
            if progress is not None:
                progress(done, total, done_bytes)
        return problems
