"""The copy pipeline: one pass over a source that feeds BLAKE3, SHA-256 and the write together, and the
check that decides whether an interrupted copy may resume.

Guarantees: memory stays flat in the file's size (a fixed ring of buffers per copy); an error of the
source is told apart from an error of the store (`SourceFailedError`); a resume continues only from a
source that holds the partial copy's bytes at every sampled window, else it starts from 0.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import io
import mmap
import os
import queue
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO, Final

import structlog

from store.digests import Digests
from store.errors import ResumeMismatch

_RING_BUFFERS: Final = 4  # enough for reader, hasher and writer to each hold one, plus one in flight

_log = structlog.get_logger()


class SourceFailedError(Exception):
    """Wraps an error raised by the source, so `put` can tell it from an error of the store itself."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


_Fill = Callable[[memoryview], int]
_EOF: Final = -1


def pump(
    ring: list[memoryview],
    fill: _Fill,
    sink: Callable[[memoryview], None] | None,
    digests: Digests,
    *,
    sha256: bool = True,
) -> int:
    """Move a stream through stages that overlap: a reader thread fills ring buffers, each hash that is
    not the calling thread's runs on a thread of its own, and the calling thread runs `sink` (the
    write) or, without a sink, BLAKE3. With a sink, BLAKE3 gets its own thread too, so the write never
    waits for a hash: profiling one camera showed the copy's BLAKE3 and write in series taking a third
    of its time. Both hashes and the write release the GIL on large buffers, so the slowest stage
    bounds throughput; the fixed ring bounds memory. A buffer returns to the reader only when every
    stage is done with it. With `sha256=False` (the read-back) `digests.sha256` is left unfed. An error
    of any stage (the reader, a hash on its thread, the calling thread's) ends the pump and is raised
    here, even where the source had ended: a size is returned only when every digest saw every byte.
    """
    free: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(ring)):
        free.put(index)
    filled: queue.SimpleQueue[tuple[int, int] | BaseException] = queue.SimpleQueue()
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
                holders[index] = holds
                filled.put((index, count))
        except BaseException as error:  # noqa: BLE001 - handed to the calling thread, which re-raises it
            filled.put(error)

    hash_failures: list[BaseException] = []

    def hash_on(
        update: Callable[[memoryview], object], inbox: queue.SimpleQueue[tuple[int, int] | None]
    ) -> None:
        try:
            while (item := inbox.get()) is not None:
                index, count = item
                update(ring[index][:count])
                release(index)
        except BaseException as error:  # noqa: BLE001 - handed to the calling thread, which re-raises it
            hash_failures.append(error)
            filled.put(error)  # wakes the calling thread, which may wait for a buffer this one holds

    updates: list[Callable[[memoryview], object]] = [digests.sha256.update] if sha256 else []
    if sink is not None:
        updates.append(digests.blake3.update)
    local: Callable[[memoryview], object] = sink if sink is not None else digests.blake3.update
    inboxes: list[queue.SimpleQueue[tuple[int, int] | None]] = [queue.SimpleQueue() for _ in updates]
    hashers = [
        threading.Thread(target=hash_on, args=(update, inbox), name="store-hash", daemon=True)
        for update, inbox in zip(updates, inboxes, strict=True)
    ]
    holds = 1 + len(hashers)
    reader = threading.Thread(target=read, name="store-reader", daemon=True)
    reader.start()
    for hasher in hashers:
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
            for inbox in inboxes:
                inbox.put(item)
            local(ring[index][:count])
            total += count
            release(index)
    finally:
        stop.set()
        free.put(-1)  # wakes the reader if it waits for a buffer
        for inbox in inboxes:
            inbox.put(None)
        for hasher in hashers:
            hasher.join()  # no hash may still read a buffer the caller reuses, nor feed a digest read next
        reader.join()
    if hash_failures:  # it failed after the source's end was queued: the digest missed bytes
        raise hash_failures[0]
    return total


def fd_filler(fd: int, start: int, end: int | None) -> _Fill:
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


DIRECT_ALIGNMENT: Final = mmap.PAGESIZE  # O_DIRECT offsets, lengths and buffers; a page covers any block


class DirectFiller:
    """Fill page-aligned buffers from `fd`, opened with O_DIRECT, from `start` to EOF, so no byte passes
    through the page cache. Every read starts aligned; a short read that ends unaligned is EOF (a
    regular file reads short only there). `fallback`, when given, is called once if the filesystem
    refuses an O_DIRECT read (EINVAL) and is to clear O_DIRECT; the reads then go on through the page
    cache. Without it the EINVAL propagates. `position` is where the next read starts."""

    def __init__(self, fd: int, start: int, fallback: Callable[[], object] | None = None) -> None:
        self.fd = fd
        self.position = start
        self._fallback = fallback
        self._direct = True
        self._ended = False

    def __call__(self, view: memoryview) -> int:
        got = 0
        while not self._ended and got < len(view):
            try:
                count = os.preadv(self.fd, [view[got:]], self.position + got)
            except OSError as error:
                if error.errno != errno.EINVAL or not self._direct or self._fallback is None:
                    raise
                self._fallback()
                self._direct = False
                continue
            got += count
            unaligned = (self.position + got) % DIRECT_ALIGNMENT != 0
            self._ended = count == 0 or (self._direct and unaligned)
        self.position += got
        return got


_STATX_DIOALIGN: Final = 0x2000  # linux/stat.h
_AT_EMPTY_PATH: Final = 0x1000
_STATX_SIZE: Final = 256  # struct statx
_STATX_DIO_OFFSET_ALIGN: Final = 156  # offset of stx_dio_offset_align in struct statx
_SYS_CACHESTAT: Final = 451  # Linux 6.5+, the same number on x86-64 and arm64
_STATFS_SIZE: Final = 256  # struct statfs is 120 bytes on 64-bit; f_type is its first field, 8 bytes
MEMORY_FILESYSTEMS: Final = frozenset({0x01021994, 0x858458F6})  # TMPFS_MAGIC, RAMFS_MAGIC
# Reads there come from a cache cachestat does not count: the lower file's (overlayfs), the server's
# (NFS, SMB, CephFS, a FUSE daemon's) or the ARC (ZFS).
UNCOUNTED_CACHES: Final = {
    0x794C7630: "overlayfs",
    0x6969: "NFS",
    0xFF534D42: "CIFS",
    0xFE534D42: "SMB2",
    0x00C36400: "CephFS",
    0x65735546: "FUSE",
    0x2FC12FC1: "ZFS",
}


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library's symbols already loaded into this process: no library search, no subprocess."""
    return ctypes.CDLL(None, use_errno=True)


def direct_io_alignment(fd: int) -> int | None:
    """The file offset alignment O_DIRECT needs on `fd` (statx STATX_DIOALIGN, Linux 6.1+), 0 where the
    file takes no direct I/O, or None where the kernel or filesystem does not say. ext4 accepts O_DIRECT
    on every file but serves it through the page cache for some (data=journal, fscrypt without inline
    encryption): only this tells such a file apart."""
    statx: Callable[..., int] | None = getattr(_libc(), "statx", None)  # glibc 2.28+
    buffer = ctypes.create_string_buffer(_STATX_SIZE)
    if statx is None or statx(fd, b"", _AT_EMPTY_PATH, _STATX_DIOALIGN, buffer) != 0:
        return None
    (mask,) = struct.unpack_from("=I", buffer.raw, 0)
    if not mask & _STATX_DIOALIGN:
        return None
    (alignment,) = struct.unpack_from("=I", buffer.raw, _STATX_DIO_OFFSET_ALIGN)
    return int(alignment)


def cached_pages(fd: int) -> int | None:
    """How many of `fd`'s pages are in the page cache (cachestat), or None where the kernel has no
    cachestat (before Linux 6.5). A read through the page cache reads these from memory, not from the
    medium. OSError where the kernel refuses to say: a seccomp filter, or a caller who neither owns
    nor may write the file."""
    whole_file = struct.pack("=QQ", 0, 0)  # struct cachestat_range: offset 0, length 0 = to the end
    counts = ctypes.create_string_buffer(5 * 8)  # struct cachestat: nr_cache first
    arguments = (ctypes.c_long(_SYS_CACHESTAT), ctypes.c_long(fd), whole_file, counts, ctypes.c_long(0))
    if _libc().syscall(*arguments) != 0:  # longs: syscall() is variadic and reads each as a long
        code = ctypes.get_errno()
        if code == errno.ENOSYS:
            return None
        raise OSError(code, os.strerror(code))
    (cached,) = struct.unpack_from("=Q", counts.raw, 0)
    return int(cached)


def filesystem_type(fd: int) -> int | None:
    """The magic number of the filesystem `fd` is on (statfs f_type), or None where fstatfs fails."""
    buffer = ctypes.create_string_buffer(_STATFS_SIZE)
    if _libc().fstatfs(fd, buffer) != 0:
        return None
    (kind,) = struct.unpack_from("=q", buffer.raw, 0)
    return int(kind)


def _source_fd(source: BinaryIO) -> int | None:
    """The source's fd when it is a regular file whose cached pages we may drop."""
    try:
        fd = source.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (OSError, ValueError, io.UnsupportedOperation):
        return None


@contextlib.contextmanager
def source_reader(source: BinaryIO) -> Iterator[_Fill]:
    """Fill buffers from `source`, from its position to EOF; errors of the source become
    SourceFailedError. A regular file at an aligned position is read with O_DIRECT (no copy through the
    page cache, none of its pages left behind), its flags restored and its position set past what was
    read when done; any other source through `readinto` or `read`."""
    fd = _source_fd(source)
    start = flags = 0
    if fd is not None:
        try:
            start = source.tell()
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
        except (OSError, ValueError):  # e.g. the camera's filesystem refuses O_DIRECT: the page cache
            fd = None
    if fd is not None and start % DIRECT_ALIGNMENT != 0:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        fd = None
    if fd is None:
        yield _buffered_filler(source)
        return
    direct_fd = fd
    reader = DirectFiller(direct_fd, start, fallback=lambda: fcntl.fcntl(direct_fd, fcntl.F_SETFL, flags))

    def fill(view: memoryview) -> int:
        try:
            return reader(view)
        except Exception as error:
            raise SourceFailedError(error) from error

    try:
        yield fill
    finally:
        fcntl.fcntl(direct_fd, fcntl.F_SETFL, flags)
        # A source that fails to seek now (unplugged) has failed already; its error is the one to raise.
        with contextlib.suppress(OSError, ValueError):
            source.seek(reader.position)


def _buffered_filler(source: BinaryIO) -> _Fill:
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
            raise SourceFailedError(error) from error
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


def resume_point(
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


MIN_CHUNK: Final = 256 * 1024


def chunk_within(memory: int, copies: int, largest: int) -> int:
    """The buffer size that lets `copies` rings live together in `memory` bytes: at most `largest`, a
    multiple of DIRECT_ALIGNMENT, and never below MIN_CHUNK (past that the copies outgrow `memory`)."""
    share = memory // (max(1, copies) * _RING_BUFFERS)
    return max(MIN_CHUNK, min(largest, share) // DIRECT_ALIGNMENT * DIRECT_ALIGNMENT)


class RingPool:
    """Reusable rings of preallocated buffers; one per concurrent put, so memory is flat in file size.
    The buffers are anonymous mmaps, so they are page-aligned as O_DIRECT needs. At most `keep_idle`
    rings are kept for reuse: a burst of copies beyond it (slow docks that gave their slot back go on
    copying) gives the rest back to the system when it ends, instead of holding them for good."""

    def __init__(self, chunk_size: int, keep_idle: int = 4) -> None:
        self._chunk_size = chunk_size
        self._keep_idle = keep_idle
        self._idle: list[list[memoryview]] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def borrowed(self) -> Iterator[list[memoryview]]:
        with self._lock:
            ring = self._idle.pop() if self._idle else None
        if ring is None:
            ring = [memoryview(mmap.mmap(-1, self._chunk_size)) for _ in range(_RING_BUFFERS)]
        try:
            yield ring
        finally:
            with self._lock:
                if len(self._idle) < self._keep_idle:
                    self._idle.append(ring)
            # A ring not kept is unmapped when its last reference goes, here or in a slice still held.
