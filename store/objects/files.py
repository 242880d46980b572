"""The filesystem adapter: objects as sealed files under a root directory.

Guarantees, beyond the interface's: an object appears at its content address only after its copy was
fsynced and (with read-back) re-read from the medium and matched; it is linked there, never renamed over
an existing object, and an existing object with the same BLAKE3 is re-hashed before it is trusted; a copy
that fails read-back is moved to `quarantine/`, never served and never deleted by the store.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Final, Self

import structlog

from store.crashpoints import Step, crash_point
from store.digests import Digests
from store.durable import TEMP_SUFFIX, fsync_dir, make_dirs, write_durably
from store.errors import (
    DiskFullError,
    ExistingObjectCorruptError,
    ObjectMissing,
    ReadBackMismatchError,
    ResumeBusyError,
    ResumeMismatch,
    SourceSizeError,
    StoreError,
    StoreNotSetUpError,
)
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
    keeper,
    object_relpath,
)
from store.objects.pipeline import (
    DIRECT_ALIGNMENT,
    MEMORY_FILESYSTEMS,
    UNCOUNTED_CACHES,
    DirectFiller,
    RingPool,
    SourceFailedError,
    cached_pages,
    direct_io_alignment,
    fd_filler,
    filesystem_type,
    pump,
    resume_point,
    source_reader,
)
from store.objects.sealing import (
    FS_IMMUTABLE_FL,
    NO_ATTRIBUTE_ERRNOS,
    SEALED_MODE,
    get_inode_flags,
    is_immutable,
    set_inode_flags,
)

_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})

_log = structlog.get_logger()


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
    """The write stage of a put: writes, fsyncs every `interval` bytes, records the durable offset.

    With `direct_flags` (the fd's flags, O_DIRECT set by the caller) whole aligned buffers are written
    with O_DIRECT, from the ring's page-aligned buffers to the device without a copy into the page
    cache; the first write that is not aligned (the file's tail) clears O_DIRECT for the rest."""

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
        direct_flags: int | None = None,
    ) -> None:
        self.fd = fd
        self.offset = offset
        self.synced = offset
        self.interval = interval
        self.sidecar = sidecar
        self.key = key
        self.stamp = stamp
        self.progress = progress
        self._direct_flags = direct_flags

    def end_direct(self) -> None:
        """Clear O_DIRECT: from now on, writes go through the page cache."""
        if self._direct_flags is not None:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, self._direct_flags & ~os.O_DIRECT)
            self._direct_flags = None

    def write(self, view: memoryview) -> None:
        if len(view) % DIRECT_ALIGNMENT != 0:
            self.end_direct()
        written = 0
        while written < len(view):
            try:
                written += os.write(self.fd, view[written:])
            except OSError as error:
                if error.errno != errno.EINVAL or self._direct_flags is None:
                    raise
                self.end_direct()  # the filesystem took the flag but refuses the write: write it cached
                continue
            if written < len(view):
                self.end_direct()  # a short write leaves the rest unaligned
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


def _drop_cached(fd: int) -> str | None:
    """Drop `fd`'s pages from the page cache, so that reads through it come from the medium. Returns why
    some may come from memory instead, or None: none stayed, the page cache is the medium (tmpfs,
    ramfs), or the kernel has no cachestat (before Linux 6.5: the drop is trusted, logged once). A page
    stays when it is mapped, locked or not yet written; a second turn catches one another reader
    brought back from the medium meanwhile. Where reads come from a cache cachestat does not count, or
    the kernel refuses to count, nothing is proven."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    kind = filesystem_type(fd)
    if kind in MEMORY_FILESYSTEMS:
        return None
    if kind in UNCOUNTED_CACHES:
        return f"reads on {UNCOUNTED_CACHES[kind]} come from a cache the kernel does not count"
    stayed: int | None = 0
    for turn in range(2):
        if turn:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        try:
            stayed = cached_pages(fd)
        except OSError as error:
            return (
                f"the kernel refused to count its cached pages ({errno.errorcode.get(error.errno or 0, '?')})"
            )
        if stayed is None:
            _warn_uncounted()
            return None
        if stayed == 0:
            return None
    return f"{stayed} of its pages stayed in the page cache when dropped (mapped, locked or unwritten)"


@functools.cache
def _warn_uncounted() -> None:
    _log.warning(
        "this kernel cannot count cached pages (cachestat, Linux 6.5+): a read-back through the page "
        "cache trusts that dropping it worked"
    )


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
    The store is safe to share between threads; each concurrent put borrows its own ring of buffers, and
    up to `idle_rings` rings are kept for the next puts (the daemon keeps as many as docks copy at once).

    Constructing a store touches nothing on disk, so opening an existing station creates nothing: the
    directories are made by `create_directories`, which only the start-up and
    set-up paths call. Used before that, the store raises StoreNotSetUpError naming what is missing.
    """

    def __init__(
        self,
        root: Path,
        *,
        read_back: bool = True,
        chunk_size: int = 4 * MiB,
        fsync_interval: int = 256 * MiB,
        on_synced: Callable[[Path], None] | None = None,
        idle_rings: int = 4,
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
        self._rings = RingPool(chunk_size, keep_idle=idle_rings)
        self._lock = threading.Lock()
        self._warned = False
        self._direct_refused: str | None = None  # why read-back cannot use O_DIRECT here, once known
        self._probe_lock = threading.Lock()
        self._seal_mode: Seal | None = None

    def create_directories(self) -> Self:
        """Make `objects/`, `partial/` and `quarantine/` under the root where missing, durably. Returns the
        store, so a set-up path reads `FileObjectStore(root).create_directories()`."""
        for directory in self._layout():
            make_dirs(directory)
        return self

    def require_directories(self) -> Self:
        """Raise StoreNotSetUpError unless the store's directories exist; creates nothing. For a set-up
        path on a station that already stored objects, where a missing directory means an unmounted disk."""
        self._require_layout()
        return self

    def _layout(self) -> tuple[Path, Path, Path]:
        return (self._objects, self._partial, self._quarantine)

    def _require_layout(self) -> None:
        """Raise StoreNotSetUpError unless every directory of the store exists."""
        for directory in self._layout():
            if not directory.is_dir():
                raise StoreNotSetUpError(root=self.root, missing=directory)

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

    @property
    def seal_mode(self) -> Seal:
        """How this store seals objects, found out on first need (it writes a probe file) and kept."""
        with self._probe_lock:
            if self._seal_mode is None:
                self._require_layout()
                self._seal_mode = self._probe_seal()
            return self._seal_mode

    def _probe_seal(self) -> Seal:
        """Find out once whether this filesystem and our capabilities allow the immutable attribute."""
        probe = self._partial / f".probe-{uuid.uuid4().hex[:12]}"
        fd = os.open(probe, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            flags = get_inode_flags(fd)
            set_inode_flags(fd, flags | FS_IMMUTABLE_FL)
            set_inode_flags(fd, flags)
        except OSError as error:
            if error.errno not in NO_ATTRIBUTE_ERRNOS:
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
            if error.errno not in NO_ATTRIBUTE_ERRNOS:
                raise
            self._warn_no_attribute(error)
            return Seal.READ_ONLY
        finally:
            os.close(fd)
        return Seal.IMMUTABLE

    def _seal_of(self, path: Path) -> Seal | None:
        """The seal an object has now, or None when it is not sealed as this store seals."""
        if stat.S_IMODE(path.lstat().st_mode) != SEALED_MODE:
            return None
        if is_immutable(path):
            return Seal.IMMUTABLE
        return Seal.READ_ONLY if self.seal_mode is Seal.READ_ONLY else None

    # -- reading --

    def path_for(self, blake3_hex: str) -> Path:
        return self.root / object_relpath(blake3_hex)

    def exists(self, blake3_hex: str) -> bool:
        if self.path_for(blake3_hex).is_file():
            return True
        self._require_layout()
        return False

    def open(self, blake3_hex: str) -> BinaryIO:
        path = self.path_for(blake3_hex)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            self._require_layout()
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
        sha256: bool = True,
    ) -> tuple[str, str, int, str | None]:
        """Hash [start, end) of `fd` as read from the medium: a whole object with O_DIRECT where the store
        allows (another reader's cached pages do not matter then), else after dropping cached pages. With
        `sha256=False` only BLAKE3 is fed. The last item is why the read may have come from memory
        instead (see `_drop_cached`), or None."""
        if start == 0 and end is None and digests is None:
            direct = self._read_direct(fd, ring, sha256=sha256)
            if direct is not None:
                found, size = direct
                return (*found.hex(), size, None)
        digests = digests if digests is not None else Digests()
        unproven = _drop_cached(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        size = pump(ring, fd_filler(fd, start, end), None, digests, sha256=sha256)
        return (*digests.hex(), size, unproven)

    def _start_direct(self, fd: int) -> int | None:
        """Set O_DIRECT on `fd` and return its flags before, or None where this store cannot use it (the
        reason logged once)."""
        if self._direct_refused is not None:
            return None
        if self.chunk_size % DIRECT_ALIGNMENT != 0:
            self._refuse_direct(f"chunk size {self.chunk_size} is not a multiple of {DIRECT_ALIGNMENT}")
            return None
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
        except OSError as error:
            code = errno.errorcode.get(error.errno or 0, "?")
            self._refuse_direct(f"the filesystem refuses O_DIRECT ({code})")
            return None
        if direct_io_alignment(fd) == 0:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            self._refuse_direct(
                "the filesystem takes O_DIRECT but serves it through the page cache (statx: no direct I/O; "
                "ext4 data=journal or fscrypt): the read-back drops its pages, checking that none stayed"
            )
            return None
        return flags

    def _read_back(self, fd: int, ring: list[memoryview]) -> tuple[str, int, str | None]:
        """BLAKE3 and size of the whole of `fd` as read from the medium, with O_DIRECT where the filesystem
        allows, so the pass copies nothing through the page cache; else through the page cache after
        dropping it, with the reason logged once per store. SHA-256 is not recomputed: the copy computed
        it over the very bytes BLAKE3 saw, so a matching BLAKE3 proves both. The last item is why the
        read may have come from memory instead, or None."""
        blake3_hex, _, size, unproven = self._digest_fd(fd, ring, sha256=False)
        return blake3_hex, size, unproven

    def _read_direct(self, fd: int, ring: list[memoryview], *, sha256: bool) -> tuple[Digests, int] | None:
        """The digests (BLAKE3, and SHA-256 with `sha256`) and size of the whole of `fd` read with
        O_DIRECT, or None where this store cannot use it (the caller reads through the page cache)."""
        flags = self._start_direct(fd)
        if flags is None:
            return None
        try:
            digests = Digests()
            return digests, pump(ring, DirectFiller(fd, 0), None, digests, sha256=sha256)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            self._refuse_direct(f"an O_DIRECT read was refused ({errno.errorcode[error.errno]})")
            return None
        finally:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)

    def _refuse_direct(self, reason: str) -> None:
        """Remember why O_DIRECT is not possible on this store, and log it the first time."""
        with self._lock:
            if self._direct_refused is not None:
                return
            self._direct_refused = reason
        _log.warning(
            "store without O_DIRECT: copies go through the page cache, dropped before the read-back",
            store=str(self.root),
            reason=reason,
        )

    def verify_object(
        self, blake3_hex: str, sha256_hex: str, size: int, *, seal: Seal | None = None
    ) -> list[ObjectProblem]:
        path = self.path_for(blake3_hex)

        def problem(kind: ProblemKind, detail: str) -> ObjectProblem:
            return ObjectProblem(blake3_hex, kind, detail)

        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            self._require_layout()
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
                found_blake3, found_sha256, _, unproven = self._digest_fd(fd, ring)
        finally:
            os.close(fd)
        if unproven is not None:
            problems.append(problem(ProblemKind.UNREAD, unproven))
        if found_blake3 != blake3_hex:
            problems.append(problem(ProblemKind.BLAKE3_MISMATCH, f"content hashes to {found_blake3}"))
        if found_sha256 != sha256_hex:
            problems.append(
                problem(ProblemKind.SHA256_MISMATCH, f"sha256 {found_sha256}, expected {sha256_hex}")
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode != SEALED_MODE:
            problems.append(problem(ProblemKind.NOT_SEALED, f"mode {mode:04o}, expected 0444"))
        elif (seal or self.seal_mode) is Seal.IMMUTABLE and not is_immutable(path):
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
        self._require_layout()
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
                direct_flags=self._start_direct(fd) if resumed % DIRECT_ALIGNMENT == 0 else None,
            )
            copy_started = time.monotonic()
            try:
                with source_reader(source) as fill:
                    pump(ring, fill, writer.write, digests)
            except SourceFailedError as failed:
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
                writer.end_direct()
                attempt.written = writer.offset
            if expected_size is not None and writer.offset != expected_size:
                raise SourceSizeError(key=attempt.key, actual=writer.offset, expected=expected_size)
            writer.sync()
            copy_seconds = time.monotonic() - copy_started
            attempt.keep_partial = attempt.key is not None  # a durable copy: an unexpected error keeps it
            if self._on_synced is not None:
                self._on_synced(attempt.partial)
            blake3_hex, sha256_hex = digests.hex()
            size = writer.offset
            read_back_seconds = 0.0
            unproven: str | None = None
            if self.read_back:
                read_back_started = time.monotonic()
                read_blake3, read_size, unproven = self._read_back(fd, ring)
                read_back_seconds = time.monotonic() - read_back_started
                if (read_blake3, read_size) != (blake3_hex, size):
                    attempt.keep_partial = True  # moved to quarantine, not discarded
                    quarantined = self._quarantine_copy(attempt, blake3_hex)
                    raise ReadBackMismatchError(
                        blake3=blake3_hex,
                        sha256=sha256_hex,
                        size=size,
                        read_blake3=read_blake3,
                        read_size=read_size,
                        quarantine=quarantined,
                    )
                if unproven is not None:
                    _log.warning(
                        "read-back not proven to have read the medium: the copy is stored, not verified",
                        store=str(self.root),
                        key=attempt.key,
                        reason=unproven,
                    )
                crash_point(Step.READ_BACK)
            result = self._publish(
                fd,
                attempt,
                ring,
                blake3_hex=blake3_hex,
                sha256_hex=sha256_hex,
                size=size,
                unproven=unproven,
            )
            return replace(result, copy_seconds=copy_seconds, read_back_seconds=read_back_seconds)

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
            # A writer killed inside the sidecar's durable write left its temp file; the put holds the
            # partial's lock, so no live writer owns one.
            for stale in attempt.sidecar.parent.glob(f".{attempt.sidecar.name}.*{TEMP_SUFFIX}"):
                stale.unlink(missing_ok=True)
            record = _read_sidecar(attempt.sidecar)
            if record is not None and record[0] == key and record[2] == attempt.stamp:
                durable = record[1]
        if durable > os.fstat(fd).st_size:
            durable = 0  # the sidecar claims more than the file holds: trust neither
        if durable > 0:
            durable = resume_point(
                source,
                durable,
                key=key,
                expected_size=expected_size,
                read_partial=lambda offset, length: os.pread(fd, length, offset),
            )
        os.ftruncate(fd, durable)
        if durable > 0:
            _, _, rehashed, _ = self._digest_fd(fd, ring, end=durable, digests=digests)
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
        unproven: str | None,
    ) -> PutResult:
        """Link the partial copy to its content address and seal it, or deduplicate. `unproven`: why its
        read-back, which matched, may have read memory instead of the medium."""
        target = self.path_for(blake3_hex)
        make_dirs(target.parent)
        os.fchmod(fd, SEALED_MODE)
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
            make_dirs(target.parent)
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
            read_back_verified=self.read_back and unproven is None,
            unread=unproven,
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
            found_blake3, found_sha256, found_size, unproven = self._digest_fd(fd, ring)
        finally:
            os.close(fd)
        if (found_blake3, found_sha256, found_size) != (blake3_hex, sha256_hex, size):
            raise ExistingObjectCorruptError(
                path=target, detail=f"stored copy hashes to blake3 {found_blake3}, sha256 {found_sha256}"
            )
        if unproven is not None:
            _log.warning(
                "stored copy not proven to have been read from the medium: not verified",
                store=str(self.root),
                key=attempt.key,
                reason=unproven,
            )
        self._discard(attempt)
        seal = self._seal_of(target)
        if seal is None:  # a crash between link and seal: finish the seal now
            if not is_immutable(target):
                target.chmod(SEALED_MODE)
            seal = self._seal(target)
        return PutResult(
            blake3_hex,
            sha256_hex,
            size,
            target,
            seal,
            deduplicated=True,
            resumed_from=attempt.resumed,
            read_back_verified=unproven is None,
            unread=unproven,
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
        Only the retention purge and vault eviction call this, each after writing its audit event."""
        path = self.path_for(blake3_hex)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            self._require_layout()
            raise ObjectMissing(blake3=blake3_hex, path=path) from None
        try:
            flags = get_inode_flags(fd)
            if flags & FS_IMMUTABLE_FL:
                set_inode_flags(fd, flags & ~FS_IMMUTABLE_FL)
        except OSError as error:
            if error.errno not in NO_ATTRIBUTE_ERRNOS:
                raise
        finally:
            os.close(fd)
        path.unlink()
        fsync_dir(path.parent)
        _log.info("object removed", store=str(self.root), blake3=blake3_hex)

    def reconcile(self, keep: KeepKeys) -> Reconciled:
        self._require_layout()
        kept_key = keeper(keep)
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
        self._require_layout()
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
