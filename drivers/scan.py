"""List the recordings on a mounted camera volume, safely, and date each one.

Guarantees:
- Nothing outside the volume root is ever opened or listed: symlinks are never followed (the walk uses
  `os.scandir` on raw bytes names and `lstat` types, files are opened with `O_NOFOLLOW`), and entries
  on another filesystem or whose real path leaves the root are refused.
- Only regular files are candidates: directories are walked, symlinks, fifos, sockets and device nodes
  are refused.
- Nothing in the volume makes the scan raise: every refused or unreadable entry is reported in
  `ScanResult.rejected` with a reason, every regular file with another extension in `ignored`.
- Names are shown safely: UTF-8, else GBK, else the raw bytes as `\\xNN`; control and bidi characters
  are escaped. `CardFile.raw_path` holds the exact bytes that open the file.

`recorded_at` comes from the MP4/MOV `mvhd` creation time, else a file-name pattern (local time of the
camera, `filename_tz`), else the file's mtime; `recorded_at_source` says which.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Literal, NamedTuple
from zoneinfo import ZoneInfo

from drivers.mp4 import movie_header_from_handle

RecordedAtSource = Literal["mvhd", "filename", "mtime"]

DEFAULT_EXTENSIONS: tuple[str, ...] = (".mp4", ".mov", ".avi", ".jpg", ".wav")
CONTAINER_EXTENSIONS = (b".mp4", b".mov", b".m4v", b".3gp", b".3g2")
# `ZFY0000001_20261122_083015_0001.MP4` and `20261122083015.mp4`: date, optional separator, time.
DEFAULT_FILENAME_PATTERNS: tuple[str, ...] = (
    (
        r"(?<!\d)(?P<year>(?:19|20)\d{2})(?P<month>\d{2})(?P<day>\d{2})[_-]?"
        r"(?P<hour>\d{2})(?P<minute>\d{2})(?P<second>\d{2})(?!\d)"
    ),
)
DEFAULT_FILENAME_TZ = "Asia/Shanghai"
MAX_DEPTH = 32
MAX_ENTRIES = 200_000
_TIME_GROUPS = ("year", "month", "day", "hour", "minute", "second")
_PROBE_BYTES = 4096


class Rejection(NamedTuple):
    """An entry that was not listed: its display path and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class CardFile:
    """One recording file on the volume, dated."""

    name: str  # relative display path, safe to log or show
    raw_path: bytes  # absolute path as raw bytes: opens exactly this file
    size: int
    mtime: datetime  # UTC
    recorded_at: datetime  # UTC
    recorded_at_source: RecordedAtSource
    duration_s: float | None = None  # from mvhd, when the container says
    # A container (MP4/MOV) without a readable movie header was never finalized: the camera lost power
    # or storage while recording, so the recording was cut off (regulation: explain interruptions).
    unfinalized: bool = False

    def open_fd(self) -> int:
        """Open the file read-only without following a symlink put in its place since the scan."""
        return os.open(self.raw_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


@dataclass(frozen=True)
class ScanResult:
    recordings: tuple[CardFile, ...]
    rejected: tuple[Rejection, ...]  # unsafe, odd or unreadable entries: worth an operator's look
    ignored: tuple[Rejection, ...] = ()  # regular files that are not recordings (by extension)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def decode_name(raw: bytes) -> str:
    """UTF-8, else GBK (Chinese camera firmware), else UTF-8 with surrogate escapes (lossless)."""
    for encoding in ("utf-8", "gbk"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("utf-8", "surrogateescape")


def display_name(text: str) -> str:
    """Escape what could corrupt a log line or a terminal: controls, bidi overrides, raw bytes."""
    out: list[str] = []
    for char in text:
        code = ord(char)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte surrogateescape could not decode
            out.append(f"\\x{code - 0xDC00:02x}")
        elif unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


def compile_time_patterns(patterns: Iterable[str]) -> list[re.Pattern[str]]:
    """Compile file-name time patterns; refuse invalid ones and ones without the time groups."""
    compiled = []
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"file-name pattern {pattern!r} is not a valid regex: {error}") from None
        missing = [group for group in _TIME_GROUPS[:5] if group not in regex.groupindex]
        if missing:
            raise ValueError(f"file-name pattern {pattern!r} lacks the named groups {', '.join(missing)}")
        compiled.append(regex)
    return compiled


def time_from_name(name: str, patterns: Sequence[re.Pattern[str]], zone: tzinfo) -> datetime | None:
    """The first valid time any pattern finds in `name` (local time in `zone`), as UTC."""
    for regex in patterns:
        for found in regex.finditer(name):
            parts = found.groupdict()
            try:
                year = int(parts["year"])
                local = datetime(
                    year + 2000 if year < 100 else year,
                    int(parts["month"]),
                    int(parts["day"]),
                    int(parts["hour"]),
                    int(parts["minute"]),
                    int(parts.get("second") or 0),
                    tzinfo=zone,
                )
            except (TypeError, ValueError):
                continue
            return local.astimezone(UTC)
    return None


def _error_reason(action: str, error: OSError) -> str:
    name = errno.errorcode.get(error.errno or 0, "error")
    return f"{action} failed: {name} ({error.strerror})"


class _Scanner:
    def __init__(
        self,
        root: bytes,
        *,
        extensions: Sequence[str],
        patterns: Sequence[re.Pattern[str]],
        zone: tzinfo,
        max_depth: int,
        max_entries: int,
    ) -> None:
        self.root = root
        self.root_real = os.path.realpath(root)
        self.root_dev = os.lstat(root).st_dev
        self.extensions = tuple(os.fsencode(extension.lower()) for extension in extensions)
        self.patterns = patterns
        self.zone = zone
        self.max_depth = max_depth
        self.max_entries = max_entries
        self.entries = 0
        self.recordings: list[CardFile] = []
        self.rejected: list[Rejection] = []
        self.ignored: list[Rejection] = []

    def reject(self, relative: str, reason: str) -> None:
        self.rejected.append(Rejection(display_name(relative), reason))

    def walk(self) -> None:
        stack: list[tuple[bytes, str, int]] = [(self.root, "", 0)]
        while stack:
            directory, relative_dir, depth = stack.pop()
            try:
                entries = self.list_directory(directory)
            except OSError as error:
                self.reject(relative_dir or ".", _error_reason("listing", error))
                continue
            subdirectories = []
            for entry in entries:
                self.entries += 1
                if self.entries > self.max_entries:
                    self.reject(relative_dir or ".", f"scan stopped: more than {self.max_entries} entries")
                    return
                name = decode_name(entry.name)
                relative = f"{relative_dir}/{name}" if relative_dir else name
                subdirectory = self.visit(entry, relative, depth)
                if subdirectory is not None:
                    subdirectories.append(subdirectory)
            stack.extend(reversed(subdirectories))  # depth-first, in name order

    def list_directory(self, directory: bytes) -> list[os.DirEntry[bytes]]:
        """The directory's entries in name order; never more than the scan may still visit."""
        budget = self.max_entries - self.entries + 1
        entries: list[os.DirEntry[bytes]] = []
        with os.scandir(directory) as listing:
            for entry in listing:
                entries.append(entry)
                if len(entries) >= budget:
                    break
        return sorted(entries, key=lambda entry: entry.name)

    def visit(self, entry: os.DirEntry[bytes], relative: str, depth: int) -> tuple[bytes, str, int] | None:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError as error:
            self.reject(relative, _error_reason("lstat", error))
            return None
        mode = info.st_mode
        if stat.S_ISLNK(mode):
            try:
                raw_target = os.readlink(entry.path)  # noqa: PTH115 - keeps the raw bytes name
                target = display_name(decode_name(raw_target))
            except OSError:
                target = "?"
            self.reject(relative, f"symbolic link to {target[:200]}, not followed")
            return None
        if info.st_dev != self.root_dev:
            self.reject(relative, "on another filesystem, not followed")
            return None
        if stat.S_ISDIR(mode):
            if depth + 1 > self.max_depth:
                self.reject(relative, f"directory deeper than {self.max_depth} levels, not scanned")
                return None
            return entry.path, relative, depth + 1
        if not stat.S_ISREG(mode):
            self.reject(relative, f"not a regular file ({_kind(mode)})")
            return None
        if not entry.name.lower().endswith(self.extensions):
            self.ignored.append(Rejection(display_name(relative), "not a recording extension"))
            return None
        real = os.path.realpath(entry.path)
        if os.path.commonpath([self.root_real, real]) != self.root_real:
            self.reject(relative, "real path is outside the volume")
            return None
        self.add_recording(entry, relative, info)
        return None

    def add_recording(self, entry: os.DirEntry[bytes], relative: str, info: os.stat_result) -> None:
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as error:
            self.reject(relative, _error_reason("open", error))
            return
        try:
            with os.fdopen(fd, "rb") as handle:
                opened = os.fstat(handle.fileno())
                if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                    self.reject(relative, "file changed while scanning")
                    return
                # Read the first block: a medium error there shows now, not mid-ingest.
                handle.read(_PROBE_BYTES)
                header = None
                is_container = entry.name.lower().endswith(CONTAINER_EXTENSIONS)
                if is_container:
                    header = movie_header_from_handle(handle)
        except OSError as error:
            self.reject(relative, _error_reason("read", error))
            return
        mtime = datetime.fromtimestamp(info.st_mtime_ns / 1e9, tz=UTC)
        source: RecordedAtSource
        if header is not None and header.created_at is not None:
            recorded_at, source = header.created_at, "mvhd"
        elif (from_name := time_from_name(relative, self.patterns, self.zone)) is not None:
            recorded_at, source = from_name, "filename"
        else:
            recorded_at, source = mtime, "mtime"
        self.recordings.append(
            CardFile(
                name=display_name(relative),
                raw_path=entry.path,
                size=info.st_size,
                mtime=mtime,
                recorded_at=recorded_at,
                recorded_at_source=source,
                duration_s=header.duration_s if header is not None else None,
                unfinalized=is_container and header is None,
            )
        )


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return f"mode {stat.filemode(mode)}"


def scan_volume(
    root: os.PathLike[str] | str | bytes,
    *,
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    filename_patterns: Sequence[str] = (),
    filename_tz: str | tzinfo = DEFAULT_FILENAME_TZ,
    max_depth: int = MAX_DEPTH,
    max_entries: int = MAX_ENTRIES,
) -> ScanResult:
    """Scan the volume mounted at `root`. Empty `filename_patterns` means the default patterns.

    Raises only for a bad argument (invalid pattern or time zone) or an unreadable `root` itself.
    """
    zone = ZoneInfo(filename_tz) if isinstance(filename_tz, str) else filename_tz
    patterns = compile_time_patterns(filename_patterns or DEFAULT_FILENAME_PATTERNS)
    raw_root = os.path.abspath(os.fsencode(root))  # noqa: PTH100 - bytes, and no symlink resolution
    scanner = _Scanner(
        raw_root,
        extensions=extensions,
        patterns=patterns,
        zone=zone,
        max_depth=max_depth,
        max_entries=max_entries,
    )
    scanner.walk()
    return ScanResult(tuple(scanner.recordings), tuple(scanner.rejected), tuple(scanner.ignored))
