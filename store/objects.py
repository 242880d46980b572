"""Write-once, content-addressed evidence storage.

Guarantees of every adapter:
- An object named `<blake3>` holds exactly the bytes that BLAKE3 names, and `put` returns their SHA-256 too.
- `put` returns only after the copy is durable and, with read-back on, re-read from disk and compared.
- A stored object is sealed (mode 0444, plus the immutable attribute where the filesystem and capability
  allow it) and nothing but `remove` deletes it. Only the retention purge may call `remove`.
- A crash or a failed source leaves at most a partial copy, resumable by its key or removed by `reconcile`.
  A keyed partial copy that nobody resumes is removed by `expire_partials` once it is old enough.
"""

from __future__ import annotations

import abc
import array
import contextlib
import enum
import errno
import fcntl
import hashlib
import io
import json
import os
import queue
import re
import stat
import struct
import threading
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Final, NamedTuple

import blake3 as blake3_module
import structlog

from store.crashpoints import Step, crash_point
from store.digests import Digests
from store.errors import (
    DiskFullError,
    ExistingObjectCorruptError,
    InvalidDigestError,
    ObjectMissing,
    ReadBackMismatchError,
    ResumeBusyError,
    ResumeMismatch,
    SourceSizeError,
    StoreError,
)

MiB: Final = 1024 * 1024
FS_IMMUTABLE_FL: Final = 0x10


def _ioc(direction: int, kind: str, number: int, size: int) -> int:
    """The kernel's _IOC() encoding, so the request numbers are right on 32- and 64-bit builds."""
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | number


# Declared with `long` in <linux/fs.h>, although the kernel copies an int.
FS_IOC_GETFLAGS: Final = _ioc(2, "f", 1, struct.calcsize("l"))
FS_IOC_SETFLAGS: Final = _ioc(1, "f", 2, struct.calcsize("l"))

# The filesystem cannot hold the attribute, or we lack CAP_LINUX_IMMUTABLE: fall back to 0444 only.
_NO_ATTRIBUTE_ERRNOS: Final = frozenset({errno.EPERM, errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL})
_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_RING_BUFFERS: Final = 4  # enough for reader, hasher and writer to each hold one, plus one in flight
_SEALED_MODE: Final = 0o444

_log = structlog.get_logger()


class Seal(enum.StrEnum):
    """How a stored object is protected. Values match the catalog's `Seal` column."""

    IMMUTABLE = "immutable"  # mode 0444 and the filesystem immutable attribute
    READ_ONLY = "read-only"  # mode 0444 only: the filesystem or capability refused the attribute


@dataclass(frozen=True, slots=True)
class PutResult:
    blake3: str
    sha256: str
    size: int
    path: Path
    seal: Seal
    deduplicated: bool
    resumed_from: int
    read_back_verified: bool


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


def _keeper(keep: KeepKeys) -> Callable[[str], bool]:
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
                size = _pump(ring, _source_filler(source), count, digests)
            except _SourceFailedError as failed:
                raise failed.error from None
        blake3_hex, sha256_hex = digests.hex()
        return ExpectedObject(blake3_hex, sha256_hex, size)

    def _borrowed_ring(self) -> contextlib.AbstractContextManager[list[memoryview]]:
        return _RingPool(MiB).borrowed()

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
        """Delete a stored object: the only removal path. Only the retention purge may call this, after it
        has checked holds and written its audit event."""

    @abc.abstractmethod
    def verify_object(self, blake3_hex: str, sha256_hex: str, size: int) -> list[ObjectProblem]:
        """Re-read one object from its medium and report every way it differs from what is expected."""

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


# --- the single-pass pipeline ------------------------------------------------------------------------


class _SourceFailedError(Exception):
    """Wraps an error raised by the source, so `put` can tell it from an error of the store itself."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


_Fill = Callable[[memoryview], int]
_EOF: Final = -1


def _pump(
    ring: list[memoryview], fill: _Fill, sink: Callable[[memoryview], None] | None, digests: Digests
) -> int:
    """Move a stream through three stages that overlap: a reader thread fills ring buffers, a hasher
    thread runs SHA-256, and the calling thread runs BLAKE3 and `sink` (the write). Both hashes and the
    write release the GIL on large buffers, so the slowest stage bounds throughput; the fixed ring bounds
    memory. A buffer returns to the reader only when both the hasher and the writer are done with it.
    """
    free: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(ring)):
        free.put(index)
    filled: queue.SimpleQueue[tuple[int, int] | BaseException] = queue.SimpleQueue()
    to_hash: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
    holders = [0] * len(ring)
    holders_lock = threading.Lock()
    stop = threading.Event()

    def release(index: int) -> None:
        with holders_lock:
            holders[index] -= 1
            last = holders[index] == 0
        if last:
            free.put(index)

    def read() -> None:
        try:
            while True:
                index = free.get()
                if index < 0 or stop.is_set():
                    return
                count = fill(ring[index])
                if count == 0:
                    filled.put((_EOF, 0))
                    return
                holders[index] = 2
                filled.put((index, count))
        except BaseException as error:  # noqa: BLE001 - handed to the calling thread, which re-raises it
            filled.put(error)

    def hash_sha256() -> None:
        while (item := to_hash.get()) is not None:
            index, count = item
            digests.sha256.update(ring[index][:count])
            release(index)

    reader = threading.Thread(target=read, name="store-reader", daemon=True)
    hasher = threading.Thread(target=hash_sha256, name="store-sha256", daemon=True)
    reader.start()
    hasher.start()
    total = 0
    try:
        while True:
            item = filled.get()
            if isinstance(item, BaseException):
                raise item
            index, count = item
            if index == _EOF:
                break
            view = ring[index][:count]
            to_hash.put(item)
            digests.blake3.update(view)
            if sink is not None:
                sink(view)
            total += count
            release(index)
    finally:
        stop.set()
        free.put(-1)  # wakes the reader if it waits for a buffer
        to_hash.put(None)
        hasher.join()
        reader.join()
    return total


def _fd_filler(fd: int, start: int, end: int | None) -> _Fill:
    """Fill buffers from `fd` at [start, end), dropping what was read from the page cache."""
    position = start

    def fill(view: memoryview) -> int:
        nonlocal position
        want = len(view) if end is None else min(len(view), end - position)
        got = 0
        while got < want:
            count = os.preadv(fd, [view[got:want]], position + got)
            if count == 0:
                break
            got += count
        if got:
            os.posix_fadvise(fd, position, got, os.POSIX_FADV_DONTNEED)
        position += got
        return got

    return fill


def _source_fd(source: BinaryIO) -> int | None:
    """The source's fd when it is a regular file whose cached pages we may drop."""
    try:
        fd = source.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (OSError, ValueError, io.UnsupportedOperation):
        return None


def _source_filler(source: BinaryIO) -> _Fill:
    """Fill buffers from `source` until full or EOF, with readinto where the source has it."""
    readinto: Callable[[memoryview], int | None] | None = getattr(source, "readinto", None)
    fd = _source_fd(source)
    dropped_to = 0

    def read_some(view: memoryview) -> int:
        if readinto is not None:
            count = readinto(view)
            if count is None:
                raise BlockingIOError(errno.EAGAIN, "source is non-blocking and has no data ready")
            return count
        data = source.read(len(view))
        view[: len(data)] = data
        return len(data)

    def fill(view: memoryview) -> int:
        nonlocal dropped_to
        got = 0
        try:
            while got < len(view):
                count = read_some(view[got:])
                if count == 0:
                    break
                got += count
        except Exception as error:
            raise _SourceFailedError(error) from error
        if fd is not None and got:
            with contextlib.suppress(OSError):
                position = os.lseek(fd, 0, os.SEEK_CUR)
                os.posix_fadvise(fd, dropped_to, position - dropped_to, os.POSIX_FADV_DONTNEED)
                dropped_to = position
        return got

    return fill


RESUME_SAMPLES: Final = 8  # windows of the prefix compared before a resume, the first and last included
RESUME_SAMPLE_BYTES: Final = 64 * 1024


def _read_at(source: BinaryIO, offset: int, count: int) -> bytes:
    source.seek(offset)
    parts: list[bytes] = []
    while count > 0 and (chunk := source.read(count)):
        parts.append(chunk)
        count -= len(chunk)
    return b"".join(parts)


def _sample_windows(durable: int) -> list[tuple[int, int]]:
    """(offset, length) of the prefix windows compared before a resume: evenly spread over [0, durable),
    the first window at 0 and the last ending at `durable`, the block written last before the stop."""
    width = min(RESUME_SAMPLE_BYTES, durable)
    last = durable - width
    starts = sorted({last * index // (RESUME_SAMPLES - 1) for index in range(RESUME_SAMPLES)})
    return [(start, width) for start in starts]


def _resume_point(
    source: BinaryIO,
    durable: int,
    *,
    key: str | None,
    expected_size: int | None,
    read_partial: Callable[[int, int], bytes],
) -> int:
    """Where to continue a partial copy of `durable` bytes: `durable` when the source is seekable, long
    enough and holds the partial's bytes at every sampled window, else 0 (a different source: copy it
    whole). Leaves the source positioned there. A source shorter than the partial is ResumeMismatch."""
    try:
        if not source.seekable():
            return 0
        origin = source.tell()
        end = source.seek(0, os.SEEK_END)
    except (OSError, ValueError):
        return 0
    available = end - origin
    if available < durable or (expected_size is not None and expected_size < durable):
        raise ResumeMismatch(
            key=key,
            source_size=available if expected_size is None else min(available, expected_size),
            durable=durable,
        )
    for offset, length in _sample_windows(durable):
        if _read_at(source, origin + offset, length) != read_partial(offset, length):
            _log.warning("resume refused: the source differs from the partial copy", key=key, offset=offset)
            source.seek(origin)
            return 0
    source.seek(origin + durable)
    return durable


class _RingPool:
    """Reusable rings of preallocated buffers; one per concurrent put, so memory is flat in file size."""

    def __init__(self, chunk_size: int) -> None:
        self._chunk_size = chunk_size
        self._idle: list[list[memoryview]] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def borrowed(self) -> Iterator[list[memoryview]]:
        with self._lock:
            ring = self._idle.pop() if self._idle else None
        if ring is None:
            ring = [memoryview(bytearray(self._chunk_size)) for _ in range(_RING_BUFFERS)]
        try:
            yield ring
        finally:
            with self._lock:
                self._idle.append(ring)


# --- filesystem helpers ------------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    """Make a directory's new entries durable: a created or renamed name is not, until this."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """mkdir -p whose new entries are durable: each parent that gained a child is fsynced."""
    if path.is_dir() or path.parent == path:
        return
    _make_dirs(path.parent)
    with contextlib.suppress(FileExistsError):
        path.mkdir()
        fsync_dir(path.parent)


def write_durably(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, os.replace, fsync the directory."""
    temp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    os.close(fd)
    temp.replace(path)
    fsync_dir(path.parent)


def get_inode_flags(fd: int) -> int:
    flags = array.array("i", [0])
    fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
    return flags[0]


def set_inode_flags(fd: int, flags: int) -> None:
    fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags))


def is_immutable(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return bool(get_inode_flags(fd) & FS_IMMUTABLE_FL)
    except OSError as error:
        if error.errno in _NO_ATTRIBUTE_ERRNOS:
            return False
        raise
    finally:
        os.close(fd)


def _safe_key(key: str) -> str:
    """A file name for a resume key: readable prefix, plus a hash so distinct keys never collide."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", key)[:64]
    return f"k-{readable}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


class _VanishedError(Exception):
    """The object a put was deduplicating into was removed before it could be opened."""


@dataclass(slots=True)
class _Attempt:
    """One put's partial copy and what an error should leave of it."""

    key: str | None
    partial: Path
    sidecar: Path | None
    stamp: str | None = None
    resumed: int = 0
    written: int = 0
    keep_partial: bool = False


class _Writer:
    """The write stage of a put: writes, fsyncs every `interval` bytes, records the durable offset."""

    def __init__(
        self,
        *,
        fd: int,
        offset: int,
        interval: int,
        sidecar: Path | None,
        key: str | None,
        stamp: str | None,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.fd = fd
        self.offset = offset
        self.synced = offset
        self.interval = interval
        self.sidecar = sidecar
        self.key = key
        self.stamp = stamp
        self.progress = progress

    def write(self, view: memoryview) -> None:
        written = 0
        while written < len(view):
            written += os.write(self.fd, view[written:])
        self.offset += written
        crash_point(Step.PARTIAL_WRITE)
        if self.offset - self.synced >= self.interval:
            self.sync()
        if self.progress is not None:
            self.progress(self.offset)

    def sync(self) -> None:
        """fsync, then drop the synced range from the page cache and record it as durable."""
        os.fsync(self.fd)
        os.posix_fadvise(self.fd, self.synced, self.offset - self.synced, os.POSIX_FADV_DONTNEED)
        self.synced = self.offset
        if self.sidecar is not None and self.key is not None:
            write_durably(self.sidecar, _sidecar_bytes(self.key, self.synced, self.stamp))
        crash_point(Step.FSYNC)


def _sidecar_bytes(key: str, durable: int, stamp: str | None) -> bytes:
    return json.dumps({"key": key, "durable": durable, "source": stamp}).encode()


def _read_sidecar(path: Path) -> tuple[str, int, str | None] | None:
    try:
        record = json.loads(path.read_bytes())
        key, durable, stamp = record["key"], record["durable"], record.get("source")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(key, str) or not isinstance(durable, int) or durable < 0:
        return None
    return key, durable, stamp if isinstance(stamp, str) else None


# --- the filesystem adapter ---------------------------------------------------------------------------


class FileObjectStore(ObjectStore):
    """Objects as sealed files under `root`: `objects/<aa>/<bb>/<blake3>`, copies in progress in
    `partial/` (with a `<key>.json` sidecar holding the last durable offset), and copies that failed
    read-back in `quarantine/` (kept for investigation, never served).

    `on_synced` is a test seam only: it is called with the partial copy's path after the final fsync and
    before read-back, so a test can change the bytes on the medium underneath. Production leaves it None.
    The store is safe to share between threads; each concurrent put borrows its own ring of buffers.
    """

    def __init__(
        self,
        root: Path,
        *,
        read_back: bool = True,
        chunk_size: int = 4 * MiB,
        fsync_interval: int = 256 * MiB,
        on_synced: Callable[[Path], None] | None = None,
    ) -> None:
        if chunk_size <= 0 or fsync_interval <= 0:
            raise ValueError("chunk_size and fsync_interval must be positive")
        self.root = Path(root)
        self.read_back = read_back
        self.chunk_size = chunk_size
        self.fsync_interval = fsync_interval
        self._on_synced = on_synced
        self._objects = self.root / "objects"
        self._partial = self.root / "partial"
        self._quarantine = self.root / "quarantine"
        for directory in (self._objects, self._partial, self._quarantine):
            _make_dirs(directory)
        self._rings = _RingPool(chunk_size)
        self._lock = threading.Lock()
        self._warned = False
        self.seal_mode = self._probe_seal()

    def _borrowed_ring(self) -> contextlib.AbstractContextManager[list[memoryview]]:
        return self._rings.borrowed()

    # -- sealing --

    def _warn_no_attribute(self, error: OSError) -> None:
        with self._lock:
            if self._warned:
                return
            self._warned = True
        _log.warning(
            "immutable attribute unavailable; objects are sealed read-only (0444) only",
            store=str(self.root),
            errno=errno.errorcode.get(error.errno or 0, "?"),
            reason=error.strerror,
        )

    def _probe_seal(self) -> Seal:
        """Find out once whether this filesystem and our capabilities allow the immutable attribute."""
        probe = self._partial / f".probe-{uuid.uuid4().hex[:12]}"
        fd = os.open(probe, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            flags = get_inode_flags(fd)
            set_inode_flags(fd, flags | FS_IMMUTABLE_FL)
            set_inode_flags(fd, flags)
        except OSError as error:
            if error.errno not in _NO_ATTRIBUTE_ERRNOS:
                raise
            self._warn_no_attribute(error)
            return Seal.READ_ONLY
        finally:
            os.close(fd)
            probe.unlink()
        return Seal.IMMUTABLE

    def _seal(self, path: Path) -> Seal:
        """Set the immutable attribute on an object already at mode 0444; say which seal it got."""
        if self.seal_mode is Seal.READ_ONLY:
            return Seal.READ_ONLY
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            set_inode_flags(fd, get_inode_flags(fd) | FS_IMMUTABLE_FL)
            os.fsync(fd)
        except OSError as error:
            if error.errno not in _NO_ATTRIBUTE_ERRNOS:
                raise
            self._warn_no_attribute(error)
            return Seal.READ_ONLY
        finally:
            os.close(fd)
        return Seal.IMMUTABLE

    def _seal_of(self, path: Path) -> Seal | None:
        """The seal an object has now, or None when it is not sealed as this store seals."""
        if stat.S_IMODE(path.lstat().st_mode) != _SEALED_MODE:
            return None
        if is_immutable(path):
            return Seal.IMMUTABLE
        return Seal.READ_ONLY if self.seal_mode is Seal.READ_ONLY else None

    # -- reading --

    def path_for(self, blake3_hex: str) -> Path:
        return self.root / object_relpath(blake3_hex)

    def exists(self, blake3_hex: str) -> bool:
        return self.path_for(blake3_hex).is_file()

    def open(self, blake3_hex: str) -> BinaryIO:
        path = self.path_for(blake3_hex)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ObjectMissing(blake3=blake3_hex, path=path) from None
        return os.fdopen(fd, "rb")

    def free_bytes(self) -> int:
        usage = os.statvfs(self.root)
        return usage.f_bavail * usage.f_frsize

    def _digest_fd(
        self,
        fd: int,
        ring: list[memoryview],
        *,
        start: int = 0,
        end: int | None = None,
        digests: Digests | None = None,
    ) -> tuple[str, str, int]:
        """Hash [start, end) of `fd` as read from the medium: cached pages are dropped first."""
        digests = digests if digests is not None else Digests()
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        size = _pump(ring, _fd_filler(fd, start, end), None, digests)
        return (*digests.hex(), size)

    def verify_object(self, blake3_hex: str, sha256_hex: str, size: int) -> list[ObjectProblem]:
        path = self.path_for(blake3_hex)

        def problem(kind: ProblemKind, detail: str) -> ObjectProblem:
            return ObjectProblem(blake3_hex, kind, detail)

        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return [problem(ProblemKind.MISSING, f"{path} does not exist")]
        except OSError as error:
            if error.errno == errno.ELOOP:
                return [problem(ProblemKind.MISSING, f"{path} is a symlink, not a stored object")]
            raise
        problems: list[ObjectProblem] = []
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return [problem(ProblemKind.MISSING, f"{path} is not a regular file")]
            if info.st_size != size:
                problems.append(problem(ProblemKind.SIZE_MISMATCH, f"{info.st_size} bytes, expected {size}"))
            with self._rings.borrowed() as ring:
                found_blake3, found_sha256, _ = self._digest_fd(fd, ring)
        finally:
            os.close(fd)
        if found_blake3 != blake3_hex:
            problems.append(problem(ProblemKind.BLAKE3_MISMATCH, f"content hashes to {found_blake3}"))
        if found_sha256 != sha256_hex:
            problems.append(
                problem(ProblemKind.SHA256_MISMATCH, f"sha256 {found_sha256}, expected {sha256_hex}")
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode != _SEALED_MODE:
            problems.append(problem(ProblemKind.NOT_SEALED, f"mode {mode:04o}, expected 0444"))
        elif self.seal_mode is Seal.IMMUTABLE and not is_immutable(path):
            problems.append(problem(ProblemKind.NOT_SEALED, "immutable attribute is missing"))
        return problems

    # -- writing --

    def put(
        self,
        source: BinaryIO,
        *,
        resume_key: str | None = None,
        expected_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        source_stamp: str | None = None,
    ) -> PutResult:
        stem = _safe_key(resume_key) if resume_key is not None else f"anon-{uuid.uuid4().hex}"
        attempt = _Attempt(
            key=resume_key,
            partial=self._partial / f"{stem}.part",
            sidecar=self._partial / f"{stem}.json" if resume_key is not None else None,
            stamp=source_stamp,
        )
        with contextlib.suppress(FileNotFoundError):
            if attempt.partial.lstat().st_nlink > 1:
                # A crash after linking into objects/: this name is the stored object, never truncate it.
                self._discard(attempt)
        fd = os.open(attempt.partial, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ResumeBusyError(key=resume_key) from None  # the other put owns the partial: keep it
            try:
                return self._copy(fd, attempt, source, expected_size, progress)
            except (DiskFullError, ResumeMismatch, SourceSizeError, ExistingObjectCorruptError):
                self._discard(attempt)
                raise
            except OSError as error:
                if error.errno in _FULL_ERRNOS:
                    self._discard(attempt)
                    raise DiskFullError(
                        root=self.root,
                        reason=errno.errorcode[error.errno or 0],
                        free_bytes=self.free_bytes(),
                        written=attempt.written,
                    ) from error
                if not attempt.keep_partial:
                    self._discard(attempt)
                raise
            except BaseException:
                if not attempt.keep_partial:
                    self._discard(attempt)
                raise
        finally:
            os.close(fd)

    def _copy(
        self,
        fd: int,
        attempt: _Attempt,
        source: BinaryIO,
        expected_size: int | None,
        progress: Callable[[int], None] | None,
    ) -> PutResult:
        """The put itself; `put` owns the fd and decides what an error leaves behind."""
        with self._rings.borrowed() as ring:
            digests = Digests()
            resumed = self._resume(
                fd, attempt, source, ring=ring, digests=digests, expected_size=expected_size
            )
            attempt.resumed = resumed
            if attempt.sidecar is not None and attempt.key is not None and resumed == 0:
                write_durably(attempt.sidecar, _sidecar_bytes(attempt.key, 0, attempt.stamp))
            self._check_space(expected_size, resumed)
            writer = _Writer(
                fd=fd,
                offset=resumed,
                interval=self.fsync_interval,
                sidecar=attempt.sidecar,
                key=attempt.key,
                stamp=attempt.stamp,
                progress=progress,
            )
            try:
                _pump(ring, _source_filler(source), writer.write, digests)
            except _SourceFailedError as failed:
                if attempt.key is not None:
                    attempt.keep_partial = True
                    writer.sync()  # everything the source gave us is resumable
                raise failed.error from None
            except Exception:
                # Stopped from outside (the progress callback saw an unplug or a daemon stop): keep the
                # partial; a resume truncates it to the last recorded durable offset. Disk full still
                # discards it (put checks that first).
                if attempt.key is not None:
                    attempt.keep_partial = True
                raise
            finally:
                attempt.written = writer.offset
            if expected_size is not None and writer.offset != expected_size:
                raise SourceSizeError(key=attempt.key, actual=writer.offset, expected=expected_size)
            writer.sync()
            attempt.keep_partial = attempt.key is not None  # a durable copy: an unexpected error keeps it
            if self._on_synced is not None:
                self._on_synced(attempt.partial)
            blake3_hex, sha256_hex = digests.hex()
            size = writer.offset
            if self.read_back:
                read_back = self._digest_fd(fd, ring)
                if read_back != (blake3_hex, sha256_hex, size):
                    attempt.keep_partial = True  # moved to quarantine, not discarded
                    quarantined = self._quarantine_copy(attempt, blake3_hex)
                    raise ReadBackMismatchError(
                        blake3=blake3_hex,
                        sha256=sha256_hex,
                        size=size,
                        read_blake3=read_back[0],
                        read_sha256=read_back[1],
                        read_size=read_back[2],
                        quarantine=quarantined,
                    )
                crash_point(Step.READ_BACK)
            return self._publish(fd, attempt, ring, blake3_hex=blake3_hex, sha256_hex=sha256_hex, size=size)

    def _check_space(self, expected_size: int | None, resumed: int) -> None:
        """Refuse early when the announced size cannot fit, instead of filling the disk first."""
        if expected_size is None:
            return
        free = self.free_bytes()
        if free < expected_size - resumed:
            raise DiskFullError(
                root=self.root, reason="not enough space for the announced size", free_bytes=free, written=0
            )

    def _resume(
        self,
        fd: int,
        attempt: _Attempt,
        source: BinaryIO,
        *,
        ring: list[memoryview],
        digests: Digests,
        expected_size: int | None,
    ) -> int:
        """Prepare the partial copy: truncate it to its durable offset, re-hash that prefix and seek the
        source past it. Returns the offset to continue from (0 when there is nothing to resume, or the
        source is not the one the partial was copied from)."""
        durable = 0
        key = attempt.key
        if attempt.sidecar is not None and key is not None:
            record = _read_sidecar(attempt.sidecar)
            if record is not None and record[0] == key and record[2] == attempt.stamp:
                durable = record[1]
        if durable > os.fstat(fd).st_size:
            durable = 0  # the sidecar claims more than the file holds: trust neither
        if durable > 0:
            durable = _resume_point(
                source,
                durable,
                key=key,
                expected_size=expected_size,
                read_partial=lambda offset, length: os.pread(fd, length, offset),
            )
        os.ftruncate(fd, durable)
        if durable > 0:
            _, _, rehashed = self._digest_fd(fd, ring, end=durable, digests=digests)
            if rehashed != durable:
                raise StoreError(detail=f"partial copy of {key!r} shrank while it was re-hashed")
        os.lseek(fd, durable, os.SEEK_SET)
        return durable

    def _publish(
        self,
        fd: int,
        attempt: _Attempt,
        ring: list[memoryview],
        *,
        blake3_hex: str,
        sha256_hex: str,
        size: int,
    ) -> PutResult:
        """Link the verified partial copy to its content address and seal it, or deduplicate."""
        target = self.path_for(blake3_hex)
        _make_dirs(target.parent)
        os.fchmod(fd, _SEALED_MODE)
        os.fsync(fd)
        while True:
            try:
                os.link(attempt.partial, target, follow_symlinks=False)
                break
            except FileExistsError:
                with contextlib.suppress(_VanishedError):
                    return self._deduplicate(
                        target, attempt, ring, blake3_hex=blake3_hex, sha256_hex=sha256_hex, size=size
                    )
            # The purge removed the existing object between the link and the open: link ours instead. Each
            # turn needs another writer to store the object and the purge to remove it again.
            _make_dirs(target.parent)
        fsync_dir(target.parent)
        crash_point(Step.LINK)
        self._discard(attempt)
        seal = self._seal(target)
        crash_point(Step.SEAL)
        return PutResult(
            blake3_hex,
            sha256_hex,
            size,
            target,
            seal,
            deduplicated=False,
            resumed_from=attempt.resumed,
            read_back_verified=self.read_back,
        )

    def _deduplicate(
        self,
        target: Path,
        attempt: _Attempt,
        ring: list[memoryview],
        *,
        blake3_hex: str,
        sha256_hex: str,
        size: int,
    ) -> PutResult:
        """The content is already stored: prove the stored copy holds it, then drop the new copy."""
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise _VanishedError from None
        except OSError as error:
            detail = f"cannot open it: {error.strerror}"
            raise ExistingObjectCorruptError(path=target, detail=detail) from error
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size != size:
                raise ExistingObjectCorruptError(
                    path=target, detail=f"{info.st_size} bytes stored, {size} bytes new"
                )
            found = self._digest_fd(fd, ring)
        finally:
            os.close(fd)
        if found != (blake3_hex, sha256_hex, size):
            raise ExistingObjectCorruptError(
                path=target, detail=f"stored copy hashes to blake3 {found[0]}, sha256 {found[1]}"
            )
        self._discard(attempt)
        seal = self._seal_of(target)
        if seal is None:  # a crash between link and seal: finish the seal now
            if not is_immutable(target):
                target.chmod(_SEALED_MODE)
            seal = self._seal(target)
        return PutResult(
            blake3_hex,
            sha256_hex,
            size,
            target,
            seal,
            deduplicated=True,
            resumed_from=attempt.resumed,
            read_back_verified=True,
        )

    def _quarantine_copy(self, attempt: _Attempt, blake3_hex: str) -> Path:
        quarantined = self._quarantine / f"{blake3_hex}-{uuid.uuid4().hex[:8]}"
        attempt.partial.replace(quarantined)
        fsync_dir(self._quarantine)
        self._discard(attempt)
        return quarantined

    def _discard(self, attempt: _Attempt) -> None:
        """Remove a partial copy and its sidecar, durably. Never touches objects/."""
        for path in (attempt.partial, attempt.sidecar):
            if path is not None:
                path.unlink(missing_ok=True)
        fsync_dir(self._partial)

    # -- removal and repair --

    def remove(self, blake3_hex: str) -> None:
        """The only removal path: clears the immutable attribute, unlinks, fsyncs the directory.
        Only the retention purge may call this, after checking holds and writing its audit event."""
        path = self.path_for(blake3_hex)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ObjectMissing(blake3=blake3_hex, path=path) from None
        try:
            flags = get_inode_flags(fd)
            if flags & FS_IMMUTABLE_FL:
                set_inode_flags(fd, flags & ~FS_IMMUTABLE_FL)
        except OSError as error:
            if error.errno not in _NO_ATTRIBUTE_ERRNOS:
                raise
        finally:
            os.close(fd)
        path.unlink()
        fsync_dir(path.parent)
        _log.info("object removed", store=str(self.root), blake3=blake3_hex)

    def reconcile(self, keep: KeepKeys) -> Reconciled:
        kept_key = _keeper(keep)
        kept: list[str] = []
        removed_keys: list[str] = []
        removed: list[Path] = []
        entries = sorted(self._partial.iterdir())
        keep_stems: set[str] = set()
        for entry in entries:
            if entry.suffix == ".json" and not entry.name.startswith("."):
                record = _read_sidecar(entry)
                if record is not None and _safe_key(record[0]) == entry.stem and kept_key(record[0]):
                    kept.append(record[0])
                    keep_stems.add(entry.stem)
                elif record is not None:
                    removed_keys.append(record[0])
        for entry in entries:
            if entry.stem in keep_stems and entry.suffix in {".part", ".json"}:
                continue
            entry.unlink(missing_ok=True)
            removed.append(entry)
        if removed:
            fsync_dir(self._partial)
        return Reconciled(tuple(kept), tuple(removed_keys), tuple(removed))

    def expire_partials(
        self, written_before: datetime, before_remove: Callable[[PartialCopy], None]
    ) -> list[PartialCopy]:
        expired: list[PartialCopy] = []
        for sidecar in sorted(self._partial.glob("k-*.json")):
            record = _read_sidecar(sidecar)
            if record is None or _safe_key(record[0]) != sidecar.stem:
                continue  # not ours to judge: `reconcile` removes malformed entries at start
            attempt = _Attempt(key=record[0], partial=sidecar.with_suffix(".part"), sidecar=sidecar)
            try:
                fd = os.open(attempt.partial, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # the put that owned it finished or discarded it since the listing
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a put is writing it
                # Read again under the lock: a put may have written it since the listing.
                record = _read_sidecar(sidecar)
                try:
                    written = max(os.fstat(fd).st_mtime, sidecar.stat().st_mtime)
                except FileNotFoundError:
                    continue
                written_at = datetime.fromtimestamp(written, UTC)
                if record is None or written_at >= written_before:
                    continue
                partial = PartialCopy(key=record[0], durable=record[1], written_at=written_at)
                before_remove(partial)
                self._discard(attempt)
                expired.append(partial)
            finally:
                os.close(fd)
        return expired


# --- the in-memory adapter ----------------------------------------------------------------------------


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
                partial.durable = _resume_point(
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

    def verify_object(self, blake3_hex: str, sha256_hex: str, size: int) -> list[ObjectProblem]:
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
        kept_key = _keeper(keep)
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
