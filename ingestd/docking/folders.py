"""Watched folders: volumes mounted by something else (a card reader, an automounter, the simulator).

Each directory that appears directly inside a watched folder is one dock, with the directory as its
volume. A `.ingestd-dock.json` file in it may add the control-channel tty and udev-like properties
(the camera simulator writes one), so a serial camera served over a pty docks through the same path.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
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

log = structlog.get_logger()

DESCRIPTOR = ".ingestd-dock.json"


def port_for(directory: Path) -> str:
    return f"folder:{directory}"


def _read_descriptor(descriptor: Path) -> tuple[str | None, str | None, dict[str, str]]:
    data: Any = json.loads(descriptor.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    extra = data.get("properties", {})
    if not isinstance(extra, dict):
        raise TypeError("properties is not an object")
    tty = str(data["tty"]) if data.get("tty") else None
    block = str(data["block"]) if data.get("block") else None
    return tty, block, {str(k): str(v) for k, v in extra.items()}


def device_for(directory: Path) -> DeviceInfo:
    """The DeviceInfo of a directory volume, enriched by its descriptor when it has a valid one."""
    properties: dict[str, str] = {"SUBSYSTEM": "folder", "FOLDER": str(directory)}
    tty: str | None = None
    block: str | None = None
    descriptor = directory / DESCRIPTOR
    if descriptor.is_file() and not descriptor.is_symlink():
        try:
            tty, block, extra = _read_descriptor(descriptor)
            properties.update(extra)
        except (OSError, ValueError, TypeError) as error:
            log.warning("dock_descriptor_invalid", folder=str(directory), error=str(error))
    # A descriptor naming a block device means the volume is that device, to be mounted by the driver;
    # otherwise the directory itself is the (already mounted) volume.
    return DeviceInfo(
        port=port_for(directory),
        properties=properties,
        tty=tty,
        block=block,
        directory=None if block else directory,
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


class FolderSource:
    """Docks each directory that appears in a watched folder once it has settled."""

    def __init__(self, folders: list[Path], sink: Callable[[DockEvent], None], *, settle_s: float) -> None:
        self._folders = folders
        self._sink = sink
        self._settle_s = settle_s
        self._observer = Observer()
        self._lock = threading.Lock()
        self._pending: dict[Path, threading.Timer] = {}
        self._docked: set[Path] = set()

    def start(self) -> None:
        for folder in self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            self._observer.schedule(_Handler(folder, self._new, self._gone), str(folder), recursive=False)
        self._observer.start()
        for folder in self._folders:  # coldplug: volumes already there
            for child in sorted(folder.iterdir()):
                if child.is_dir() and not child.is_symlink():
                    self._new(child)

    def stop(self) -> None:
        self._observer.stop()
        with self._lock:
            for timer in self._pending.values():
                timer.cancel()
        self._observer.join(timeout=5)

    def _new(self, directory: Path) -> None:
        # The creator is still filling the directory (descriptor, files); dock after it settles.
        with self._lock:
            if directory in self._docked or directory in self._pending:
                return
            timer = threading.Timer(self._settle_s, self._settled, args=(directory,))
            timer.daemon = True
            self._pending[directory] = timer
            timer.start()

    def _settled(self, directory: Path) -> None:
        with self._lock:
            self._pending.pop(directory, None)
            if not directory.is_dir():
                return
            self._docked.add(directory)
        self._sink(Docked(device_for(directory)))

    def _gone(self, directory: Path) -> None:
        with self._lock:
            timer = self._pending.pop(directory, None)
            if timer is not None:
                timer.cancel()
            was_docked = directory in self._docked
            self._docked.discard(directory)
        if was_docked:
            self._sink(Undocked(port_for(directory)))
