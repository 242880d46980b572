"""Watched folders: volumes mounted by something else (a card reader, an automounter, the simulator).

Each directory that appears directly inside a watched folder is one dock, with the directory as its
volume. A `.ingestd-dock.json` file in it may add the control-channel tty and udev-like properties
(the camera simulator writes one), so a serial camera served over a pty docks through the same path.
`"storage": "later"` says the directory is not the volume: the camera shows its storage only after
SetMSDC, as the same port docked again with a `block` (a re-enumerating camera).

A directory that comes with the station's descriptor naming a device docks at once where `ready` (the
driver registry) says its driver can start: the station's glue moves it in whole. A plain directory
waits out the settle window (an automounter may still be mounting over it).

Guarantees: the descriptor is a claim about devices, so it is honoured only when the station wrote it:
a regular file owned by root (or the daemon's own user), writable by nobody else, on the watched
folder's own filesystem (never on the docked medium: a card mounted there could carry one). The tty it
names must be a terminal device and the block device one that nothing on the station has mounted or
swaps to; it may not override the `SUBSYSTEM` and `FOLDER` properties. Otherwise the directory docks
as a plain volume and the reason is logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from drivers.base import DeviceInfo
from ingestd.docking.events import Docked, DockEvent, Undocked
from ingestd.docking.source import DeviceSource, Ready, Settle

log = structlog.get_logger()

DESCRIPTOR = ".ingestd-dock.json"


def port_for(directory: Path) -> str:
    return f"folder:{directory}"


DESCRIPTOR_MAX_BYTES = 64 * 1024
RESERVED_PROPERTIES = frozenset({"SUBSYSTEM", "FOLDER"})


class UntrustedDescriptorError(ValueError):
    """A descriptor the station did not write, or that names devices it may not."""


@dataclass(frozen=True)
class _Descriptor:
    tty: str | None
    block: str | None
    properties: dict[str, str]
    storage_later: bool  # the directory is not the volume: it shows only after SetMSDC


def _read_descriptor(descriptor: Path) -> _Descriptor:
    fd = os.open(descriptor, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedDescriptorError("not a regular file")
        if info.st_uid not in (0, os.geteuid()) or info.st_mode & 0o022:
            raise UntrustedDescriptorError(
                f"owned by uid {info.st_uid} with mode {stat.S_IMODE(info.st_mode):04o}: only a file "
                "of root's that nobody else can write is honoured"
            )
        if info.st_dev != descriptor.parent.parent.stat().st_dev:
            raise UntrustedDescriptorError(
                "it lies on the docked medium, not on the watched folder's filesystem"
            )
        raw = handle.read(DESCRIPTOR_MAX_BYTES + 1)
    if len(raw) > DESCRIPTOR_MAX_BYTES:
        raise UntrustedDescriptorError(f"larger than {DESCRIPTOR_MAX_BYTES} bytes")
    data: Any = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    extra = data.get("properties", {})
    if not isinstance(extra, dict):
        raise TypeError("properties is not an object")
    reserved = sorted(RESERVED_PROPERTIES & {str(k) for k in extra})
    if reserved:
        raise UntrustedDescriptorError(f"it may not set {', '.join(reserved)}")
    storage = data.get("storage")
    if storage not in (None, "later"):
        raise TypeError(f'storage is {storage!r}, not "later"')
    tty = _terminal(str(data["tty"])) if data.get("tty") else None
    block = _unused_block_device(str(data["block"])) if data.get("block") else None
    return _Descriptor(tty, block, {str(k): str(v) for k, v in extra.items()}, storage == "later")


def _device_node(path: str, kind: str) -> os.stat_result:
    resolved = os.path.realpath(path)
    if not resolved.startswith("/dev/"):
        raise UntrustedDescriptorError(f"{kind} {path!r} is not a device node under /dev")
    try:
        return Path(resolved).stat()
    except OSError as error:
        raise UntrustedDescriptorError(f"{kind} {path!r}: {error.strerror}") from None


def _terminal(path: str) -> str:
    """`path` if it is a terminal (a pty or a serial port), the only thing a control channel runs on."""
    if not stat.S_ISCHR(_device_node(path, "tty").st_mode):
        raise UntrustedDescriptorError(f"tty {path!r} is not a character device")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise UntrustedDescriptorError(f"tty {path!r}: {error.strerror}") from None
    try:
        if not os.isatty(fd):
            raise UntrustedDescriptorError(f"tty {path!r} is not a terminal")
    finally:
        os.close(fd)
    return path


def _station_devices() -> set[int]:
    """Device numbers the station itself uses: mounted anywhere (by number or by source), or swap."""
    used: set[int] = set()
    sources: list[str] = []
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split()
        major, _, minor = fields[2].partition(":")
        used.add(os.makedev(int(major), int(minor)))
        after = fields.index("-") if "-" in fields else -1
        if after >= 0 and len(fields) > after + 2:
            sources.append(fields[after + 2])
    with contextlib.suppress(OSError):
        sources += [line.split()[0] for line in Path("/proc/swaps").read_text().splitlines()[1:] if line]
    for source in sources:
        if source.startswith("/dev/"):
            with contextlib.suppress(OSError):
                info = Path(source).stat()
                if stat.S_ISBLK(info.st_mode):
                    used.add(info.st_rdev)
    return used


def _disk_members(rdev: int) -> list[Path]:
    """The sysfs directories of the whole disk `rdev` belongs to and of each of its partitions."""
    node = Path(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}").resolve()
    disk = node.parent if (node / "partition").exists() else node
    if not disk.is_dir():
        return []
    return [disk, *(entry for entry in disk.iterdir() if (entry / "partition").exists())]


def _device_number(member: Path) -> int | None:
    try:
        major, _, minor = (member / "dev").read_text(encoding="ascii").strip().partition(":")
        return os.makedev(int(major), int(minor))
    except (OSError, ValueError):
        return None


def _unused_block_device(path: str) -> str:
    """`path` if it is a block device of which no part is mounted, swapped on or held by another
    device (LVM, RAID, dm-crypt): a docked medium, never a disk of the station (the driver would mount
    it, and delete from it after ingest)."""
    info = _device_node(path, "block")
    if not stat.S_ISBLK(info.st_mode):
        raise UntrustedDescriptorError(f"block {path!r} is not a block device")
    members = _disk_members(info.st_rdev)
    numbers = {info.st_rdev} | {n for n in map(_device_number, members) if n is not None}
    held = any(any((member / "holders").iterdir()) for member in members if (member / "holders").is_dir())
    if held or numbers & _station_devices():
        raise UntrustedDescriptorError(
            f"block {path!r} (or another part of its disk) is in use by the station"
        )
    return path


def device_for(directory: Path, *, log_ignored: bool = True) -> DeviceInfo:
    """The DeviceInfo of a directory volume, enriched by its descriptor when it has a trusted one.
    `log_ignored=False`: a look ahead of the dock, which logs an ignored descriptor itself."""
    properties: dict[str, str] = {"SUBSYSTEM": "folder", "FOLDER": str(directory)}
    read = _Descriptor(None, None, {}, storage_later=False)
    descriptor = directory / DESCRIPTOR
    if descriptor.is_file() and not descriptor.is_symlink():
        try:
            read = _read_descriptor(descriptor)
            properties.update(read.properties)
        except (OSError, ValueError, TypeError) as error:
            if log_ignored:
                log.warning("dock_descriptor_ignored", folder=str(directory), error=str(error))
    # A descriptor naming a block device means the volume is that device, to be mounted by the driver;
    # one saying the storage comes later means there is no volume yet; otherwise the directory itself is
    # the (already mounted) volume.
    return DeviceInfo(
        port=port_for(directory),
        properties=properties,
        tty=read.tty,
        block=read.block,
        directory=None if read.block or read.storage_later else directory,
    )


class _Handler(FileSystemEventHandler):
    def __init__(
        self, watched: Path, on_new: Callable[[Path], None], on_gone: Callable[[Path], None]
    ) -> None:
        self._watched = watched
        self._on_new = on_new
        self._on_gone = on_gone

    def _direct_child(self, path: str | bytes) -> Path | None:
        candidate = Path(path if isinstance(path, str) else path.decode("utf-8", "surrogateescape"))
        return candidate if candidate.parent == self._watched else None

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, DirCreatedEvent):
            child = self._direct_child(event.src_path)
            if child is not None:
                self._on_new(child)
        elif isinstance(event, DirDeletedEvent):
            child = self._direct_child(event.src_path)
            if child is not None:
                self._on_gone(child)
        elif isinstance(event, DirMovedEvent):
            gone, new = self._direct_child(event.src_path), self._direct_child(event.dest_path)
            if gone is not None:
                self._on_gone(gone)
            if new is not None:
                self._on_new(new)


class FolderSource(DeviceSource):
    """Docks each directory that appears in a watched folder once it has settled."""

    thread_name = "folder-source"

    def __init__(
        self,
        folders: list[Path],
        sink: Callable[[DockEvent], None],
        *,
        settle_s: float,
        ready: Ready | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        super().__init__(sink, stop=stop)
        self._folders = folders
        self._ready = ready
        self._observer = Observer()
        # Filled by the observer's thread, taken in by the source's: (appeared?, directory).
        self._changes: queue.SimpleQueue[tuple[bool, Path]] = queue.SimpleQueue()
        # The creator is still filling a new directory (descriptor, files): it docks once settled.
        self._settle: Settle[Path] = Settle(settle_s)
        self._docked: set[Path] = set()
        self._present_at_start: set[Path] = set()  # coldplugged: they settle, never dock early

    def _listen(self) -> None:
        for folder in self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            handler = _Handler(folder, self._appeared, self._disappeared)
            self._observer.schedule(handler, str(folder), recursive=False)
        self._observer.start()
        for folder in self._folders:  # coldplug: volumes already there
            for child in sorted(folder.iterdir()):
                if child.is_dir() and not child.is_symlink():
                    self._present_at_start.add(child)
                    self._appeared(child)

    def _appeared(self, directory: Path) -> None:
        self._changes.put((True, directory))

    def _disappeared(self, directory: Path) -> None:
        self._changes.put((False, directory))

    def _wait_for_change(self, timeout: float) -> list[DockEvent]:
        decided: list[DockEvent] = []
        try:
            change = self._changes.get(timeout=timeout)
            while True:
                appeared, directory = change
                now = time.monotonic()
                if appeared:
                    if directory not in self._docked:
                        self._settle.touch(directory, now)
                        decided += self._early(directory)
                else:
                    self._present_at_start.discard(directory)  # back later, it is a new arrival
                    if not self._settle.drop(directory) and directory in self._docked:
                        self._docked.discard(directory)
                        decided.append(Undocked(port_for(directory)))
                change = self._changes.get_nowait()
        except queue.Empty:
            pass
        return decided

    def _early(self, directory: Path) -> list[DockEvent]:
        """Its dock now, if it came with a descriptor naming a device its driver can start on."""
        if self._ready is None or directory in self._present_at_start or not directory.is_dir():
            return []
        device = device_for(directory, log_ignored=False)
        if (device.tty is None and device.block is None) or not self._ready(device):
            return []
        self._settle.drop(directory)
        self._docked.add(directory)
        log.info("docked_early", port=device.port, tty=device.tty, block=device.block)
        return [Docked(device)]

    def _settled(self, now: float) -> list[DockEvent]:
        docked: list[DockEvent] = []
        for directory in self._settle.due(now):
            if directory.is_dir():
                self._docked.add(directory)
                docked.append(Docked(device_for(directory)))
        return docked

    def _next_deadline(self) -> float | None:
        return self._settle.next_deadline()

    def _close(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
