"""One dock of one camera, from identification to unmount: the dock sequence of DESIGN.md, stages 3 to 8.

Guarantees:
- nothing is deleted from the camera unless the bytes read from it in this session hash to a stored
  object that was re-read from disk with its BLAKE3 matching, and the catalog commit (with its audit
  event) is durable. A file that matches an earlier recording by path, size and time is read again: the
  same bytes are proven by the stored copy, other bytes are a new recording. Each deletion, and each
  refusal, is an audit event;
- a bad file (hostile name, symlink, read error) is flagged and the session goes on;
- an unplug ends the session as "unplugged" with the partial copy kept for resume;
- a camera docked by its control channel alone gets its volume handed over once it appears
  (`StorageHandover`), within `storage_wait_s`; one that re-enumerates after SetMSDC (its USB device goes
  and comes back with storage only) stays this one session if it is back within `reenumerate_s`. Neither
  ⇒ the session ends with its reason and nothing is deleted;
- a full store ends the session as failed with an alarm, and leaves the camera untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import structlog
from blake3 import blake3
from sqlalchemy import select
from sqlalchemy.orm import Session

from drivers.base import (
    CameraIdentity,
    CameraLink,
    ClockSync,
    Deletion,
    DeletionOutcome,
    DeviceGone,
    DeviceInfo,
    DriverError,
    DriverOptions,
    MountError,
    OriginalFile,
    Unsupported,
)
from drivers.scan import CardFile, decode_name, display_name, scan_volume
from ingestd import records, replication
from ingestd.eviction import RESTORE_ACTION
from ingestd.flagging import FlagNotifier, FlagService
from ingestd.policies import dock as dock_flags
from ingestd.policies.clock import corrected_recorded_at
from ingestd.policies.deadlines import DeadlineFacts, deadline_for, evaluate_late, recording_end
from ingestd.progress import DockProgress
from store.audit import AuditLog
from store.catalog import Catalog
from store.crashpoints import Step, crash_point
from store.errors import DiskFullError, ExistingObjectCorruptError, IntegrityError, StoreError
from store.models import (
    Confidentiality,
    CustodyKind,
    DockVisit,
    Recording,
    RetentionClass,
    SessionState,
    StoredObject,
)
from store.objects import ExpectedObject, ObjectStore, ProblemKind, PutResult

if TYPE_CHECKING:
    from ingestd.services import Services

log = structlog.get_logger()


class Unplugged(Exception):  # noqa: N818 - an event, not a failure of ours
    """The camera went away mid-session (raised from the copy loop to stop the put)."""


@dataclass(frozen=True)
class _Docked:
    """The facts every file of this dock shares, fixed once the camera is checked in."""

    dock_session_id: int
    camera_id: int
    identity: CameraIdentity
    offset_s: float | None
    volume: Path


UNFINALIZED = "unfinalized container"
# The deletion of a dock's proven originals: outcome "started" before the first unlink, "done" with the
# per-file outcomes, or "interrupted" (written at start-up) when the daemon died in between.
DELETE_ORIGINALS = "camera.delete-originals"


@dataclass(frozen=True)
class _Proven:
    """A camera file whose bytes, read in this session, hash to a stored, read-back-verified object."""

    original: OriginalFile
    recording_id: int
    blake3: str
    sha256: str


@dataclass(frozen=True)
class _Stored:
    """A camera file copied into the store in this session, not yet in the catalog."""

    original: OriginalFile
    result: PutResult
    key: str
    same_source_as: tuple[int, ...]  # earlier recordings with this path, size and time but other bytes
    read_whole: bool  # every byte of the object was read from the camera in this session


class _ObjectGoneError(StoreError):
    """The object a put deduplicated into was removed (by the purge) before the catalog commit."""

    template = "object {blake3} was removed between the copy and the catalog commit"
    wire_code = "object-gone"


class _Interrupted(Exception):  # noqa: N818 - control flow for a daemon stop, not an error
    pass


class StorageMissing(Exception):  # noqa: N818 - an outcome of the dock, recorded as the session's reason
    """The camera switched to mass storage but no volume appeared in time."""


@dataclass(frozen=True)
class IngestSettings:
    clock_samples: int = 5
    delete_after_ingest: bool = True
    deadline_window: timedelta = timedelta(hours=24)
    presence_check_interval_s: float = 0.5
    storage_wait_s: float = 15.0  # for the volume of a camera docked without one, from SetMSDC
    reenumerate_s: float = 15.0  # for a camera that left its port after SetMSDC to come back


AWAITING_STORAGE = "awaiting-storage"  # the dock's state while its session waits for the volume


class StorageHandover:
    """Between a session and the dock manager: the volume that appears after the dock, and whether the
    camera's leaving its port is a re-enumeration. Thread-safe.

    The grace opens when the session sends SetMSDC and closes once it has mounted a volume; an undock
    inside it is the camera re-enumerating (`detach`), outside it a real unplug."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._block: str | None = None
        self._disk_sequence: str | None = None
        self._grace = False
        self._detached_at: float | None = None
        self._device_serial: str | None = None

    def identified(self, device_serial: str) -> None:
        """The device serial the camera reported over its authenticated control channel."""
        with self._changed:
            self._device_serial = device_serial

    @property
    def device_serial(self) -> str | None:
        with self._changed:
            return self._device_serial

    def offer(self, block: str, disk_sequence: str | None = None) -> None:
        """The port's volume appeared (late storage, or the camera back after re-enumerating), with the
        DISKSEQ of its disk where the event had one."""
        with self._changed:
            self._block, self._disk_sequence = block, disk_sequence
            self._detached_at = None
            self._changed.notify_all()

    @property
    def in_grace(self) -> bool:
        with self._changed:
            return self._grace

    def open_grace(self) -> None:
        with self._changed:
            self._grace = True

    def detach(self) -> bool:
        """The camera left its port: inside the grace, a re-enumeration (returns True, and a volume
        offered before is gone with it); else False, an unplug."""
        with self._changed:
            if not self._grace:
                return False
            self._block = None
            if self._detached_at is None:  # gone again before it was back: the first leave counts
                self._detached_at = time.monotonic()
            self._changed.notify_all()
            return True

    @property
    def detached(self) -> bool:
        """Gone inside the grace and not back (yet)."""
        with self._changed:
            return self._detached_at is not None

    @property
    def awaiting(self) -> bool:
        """Inside the grace with no volume: a Docked on this port is the camera coming back."""
        with self._changed:
            return self._grace and self._block is None

    def take(
        self, needed: bool, settings: IngestSettings, stopping: threading.Event
    ) -> tuple[str, str | None] | None:
        """The volume to mount (its node and DISKSEQ) where one had to come: waited for when `needed`
        or while the camera is away; None where the dock's own volume stands. The grace stays open
        until `close_grace`. Raises `Unplugged` when a detached camera is not back within
        `reenumerate_s`, `StorageMissing` when none came within `storage_wait_s`, `_Interrupted` when
        the daemon stops."""
        started = time.monotonic()
        with self._changed:
            waited = needed or self._detached_at is not None
            while needed or self._detached_at is not None:
                if self._block is not None:
                    break
                if stopping.is_set():
                    raise _Interrupted
                if self._detached_at is not None:
                    remaining = self._detached_at + settings.reenumerate_s - time.monotonic()
                    if remaining <= 0:
                        raise Unplugged(
                            f"the camera left its port after SetMSDC and was not back within "
                            f"{settings.reenumerate_s:g} s"
                        )
                else:
                    remaining = started + settings.storage_wait_s - time.monotonic()
                    if remaining <= 0:
                        raise StorageMissing(
                            f"no storage appeared within {settings.storage_wait_s:g} s of SetMSDC"
                        )
                self._changed.wait(min(remaining, 0.5))  # 0.5: notice a daemon stop
            if not waited or self._block is None:
                return None
            return self._block, self._disk_sequence

    def close_grace(self) -> bool:
        """The volume is mounted: from now on the camera leaving is an unplug. Whether it left (and is
        not back) meanwhile: then the mount raced its leaving, and that is an unplug too."""
        with self._changed:
            self._grace = False
            return self._detached_at is not None

    def discard(self, block: str) -> None:
        """`block` went as it was mounted: wait for the camera's next volume, not for that one again."""
        with self._changed:
            if self._block == block:
                self._block = None


@dataclass
class SessionSummary:
    port: str
    device_id: str | None = None
    state: SessionState = SessionState.IDENTIFYING
    reason: str | None = None
    files: int = 0
    bytes: int = 0
    deduplicated: int = 0
    late: int = 0
    errors: int = 0
    deleted: int = 0
    reverified: int = 0  # files stored on an earlier dock, read again and matched before deletion
    seconds: float = 0.0
    # Of `seconds`, the store's copy and read-back passes of the files stored (PutResult); the rest is
    # the session's own: identification, custody, commits, re-reading known files, deletion.
    copy_seconds: float = 0.0
    read_back_seconds: float = 0.0
    rejected: list[str] = field(default_factory=list)

    @property
    def mib_per_s(self) -> float:
        return self.bytes / (1024 * 1024) / self.seconds if self.seconds > 0 else 0.0


def source_key(scanned: CardFile, volume: Path) -> str:
    """What makes a file on a camera 'the same recording' across docks: its path on the volume (the
    mount point differs per dock), its size and its time."""
    relative = os.path.relpath(scanned.raw_path, os.fsencode(volume))
    identity = b"\0".join([relative, str(scanned.size).encode(), scanned.recorded_at.isoformat().encode()])
    return blake3(identity).hexdigest()


def shown_path(path: Path) -> str:
    """A camera path as logs and audit details may hold it: decoded like the scanner's names (raw bytes
    a name cannot decode would make the audit details unencodable) and escaped for display."""
    return display_name(decode_name(os.fsencode(path)))


def changed_source_key(key: str, blake3_hex: str) -> str:
    """The key of a recording whose file has the path, size and time of an earlier one but other bytes."""
    return blake3(f"{key}\0{blake3_hex}".encode()).hexdigest()


def source_stamp(original: OriginalFile) -> str:
    """What a resumed copy must find unchanged in its source (see ObjectStore.put)."""
    return f"{original.size}:{original.mtime_ns}"


def open_regular_nofollow(path: bytes | str | Path) -> BinaryIO:
    """Open a camera file for reading, refusing symlinks and anything that is not a regular file."""
    # O_NONBLOCK: a fifo swapped in after the scan must not block the open; regular files ignore it.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return os.fdopen(fd, "rb", buffering=0)


def run_session(
    services: Services,
    camera: CameraLink,
    *,
    device: DeviceInfo,
    driver_name: str,
    options: DriverOptions,
    settings: IngestSettings,
    clock: Callable[[], datetime],
    progress: DockProgress,
    unplugged: threading.Event,
    stopping: threading.Event,
    storage: StorageHandover | None = None,
) -> SessionSummary:
    """Ingest one opened camera to the end of its session: the one place an `IngestSession` is built,
    for a dock of the daemon and for `ingestd import` alike."""
    return IngestSession(
        catalog=services.catalog,
        store=services.store,
        audit=services.audit,
        notifier=services.flag_notifier,
        camera=camera,
        device=device,
        driver_name=driver_name,
        options=options,
        settings=settings,
        progress=progress,
        unplugged=unplugged,
        stopping=stopping,
        clock=clock,
        storage=storage,
    ).run()


class IngestSession:
    def __init__(
        self,
        *,
        catalog: Catalog,
        store: ObjectStore,
        audit: AuditLog,
        notifier: FlagNotifier,
        camera: CameraLink,
        device: DeviceInfo,
        driver_name: str,
        options: DriverOptions,
        settings: IngestSettings,
        progress: DockProgress,
        unplugged: threading.Event,
        stopping: threading.Event,
        clock: Callable[[], datetime],
        storage: StorageHandover | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.audit = audit
        self.camera = camera
        self.device = device
        self.driver_name = driver_name
        self.options = options
        self.settings = settings
        self.progress = progress
        self.unplugged = unplugged
        self.stopping = stopping
        self.clock = clock
        self.storage = storage if storage is not None else StorageHandover()
        self._block = device.block  # the volume's node, while it is a block device
        self.summary = SessionSummary(port=device.port)
        self.flags = FlagService(notifier)
        self._last_presence_check = 0.0
        self._log = log.bind(port=device.port)

    # -- stages -------------------------------------------------------------------------------------

    def run(self) -> SessionSummary:
        started = time.monotonic()
        with self.catalog.transaction() as db:
            dock_session_id = records.open_dock_session(db, self.device.port, self.clock()).id
        try:
            self._run(dock_session_id)
        except (Unplugged, DeviceGone) as gone:
            self._end(SessionState.UNPLUGGED, f"camera unplugged: {gone}")
        except DiskFullError as full:
            self._end(SessionState.FAILED, f"store full: {full}")
            self._log.error("store_full_alarm", error=str(full))
            self._flag_store_full(dock_session_id, full)
        except IntegrityError as error:
            # Never swallowed: recorded, logged loudly, and the camera keeps its originals.
            self._end(SessionState.FAILED, f"integrity error: {error}")
            self._log.critical("integrity_error", error=str(error))
        except DriverError as error:
            self._end(SessionState.FAILED, str(error))
        except StorageMissing as missing:
            self._end(SessionState.FAILED, str(missing))
        except _Interrupted:
            self._end(SessionState.INTERRUPTED, "daemon stopping; the next dock resumes")
        except Exception as error:
            # A bug, not bad input: record the session as failed so status shows it, then let it surface.
            self._end(SessionState.FAILED, f"internal error: {type(error).__name__}: {error}")
            raise
        finally:
            self.camera.close()
            self.summary.seconds = time.monotonic() - started
            self._close_session(dock_session_id)
        return self.summary

    def _run(self, dock_session_id: int) -> None:
        identity = self.camera.identify()
        self.summary.device_id = identity.device_serial
        self.storage.identified(identity.device_serial)
        self._log = self._log.bind(device_id=identity.device_serial)
        self.progress.set_state(SessionState.SYNCING.value)
        reading = self.camera.sync_clock(self.settings.clock_samples)
        battery, storage = self._health()
        camera_id, offset = self._check_in(dock_session_id, identity, reading, battery, storage)
        self._log.info(
            "camera_identified",
            officer_no=identity.officer_no,
            clock_offset_s=reading.offset_s,
            clock_state=reading.state.value,
            battery_percent=battery,
        )
        self._enter_mass_storage()
        with contextlib.ExitStack() as mounted:
            volume = self._mount(mounted)
            self._ingest_volume(_Docked(dock_session_id, camera_id, identity, offset, volume))
        self.summary.state = SessionState.DONE

    def _enter_mass_storage(self) -> None:
        """SetMSDC, then the volume: the one the dock had, or the one that appears after it."""
        needed = self.camera.needs_storage()
        self.storage.open_grace()
        try:
            self.camera.enter_mass_storage()
        except Unsupported:
            self.storage.close_grace()  # plain mass storage is already there: it does not re-enumerate
        except DeviceGone:
            # A camera that drops its control interface as it switches may do so before its reply is
            # read: that is the switch, and its storage decides (the dock's, or the one that follows).
            if not needed and self.device.block is None:
                raise
            self._log.info("control_channel_gone_on_switch", detail="taking the camera's storage")
            if not needed:
                self._attach((self.device.block, self.device.properties.get("DISKSEQ")))
        self._await_storage(needed)

    def _await_storage(self, needed: bool) -> None:
        if needed or self.storage.detached:
            self.progress.set_state(AWAITING_STORAGE)
            self._log.info("awaiting_storage", storage_wait_s=self.settings.storage_wait_s)
        self._attach(self.storage.take(needed, self.settings, self.stopping))

    def _attach(self, volume: tuple[str | None, str | None] | None) -> None:
        if volume is not None and volume[0] is not None:
            block, disk_sequence = volume[0], volume[1]
            self.camera.attach_storage(block, disk_sequence)
            self._block = block
            self._log.info("storage_attached", block=block, disk_sequence=disk_sequence)

    def _mount(self, mounted: contextlib.ExitStack) -> Path:
        """Mount the volume, then close the re-enumeration grace. A volume gone as it is mounted is a
        camera re-enumerating after SetMSDC (a composite camera's disk goes with its tty): wait for it
        to come back, as for an undock in the grace."""
        while True:
            try:
                volume = self._mount_once(mounted)
            except (MountError, DeviceGone) as error:
                if self._block is None or not self.storage.in_grace or self.camera.present():
                    raise  # there and not mountable, or no SetMSDC: no re-enumeration
                self._log.info("volume_gone_at_mount", block=self._block, error=str(error))
                self.storage.discard(self._block)
                self._await_storage(needed=True)
                continue
            if self.storage.close_grace():
                raise Unplugged("the camera left its port as its volume was mounted")
            return volume

    def _mount_once(self, mounted: contextlib.ExitStack) -> Path:
        # A node that names another disk by now (a re-enumerated one got its name) is gone too.
        if self._block is not None and self.storage.in_grace and not self.camera.present():
            raise DeviceGone(self.camera.name, "mount", f"{self._block} is not the disk that docked")
        return mounted.enter_context(self.camera.mounted_volume())

    def _health(self) -> tuple[int | None, tuple[int, int] | None]:
        battery: int | None = None
        storage: tuple[int, int] | None = None
        with contextlib.suppress(Unsupported):
            battery = self.camera.battery().percent
        try:
            info = self.camera.storage()
            storage = (info.free_bytes, info.total_bytes)
        except Unsupported:
            pass
        return battery, storage

    def _check_in(
        self,
        dock_session_id: int,
        identity: CameraIdentity,
        reading: ClockSync,
        battery: int | None,
        storage: tuple[int, int] | None,
    ) -> tuple[int, float | None]:
        now = self.clock()
        usb_serial = self.device.properties.get("ID_SERIAL_SHORT")
        with self.flags.transaction(self.catalog) as flags:
            db = flags.db
            dock_session = db.get_one(DockVisit, dock_session_id)
            registration = records.register_camera(
                db,
                self.audit,
                identity=identity,
                usb_serial=usb_serial,
                driver=self.driver_name,
                port=self.device.port,
                now=now,
            )
            camera = registration.camera
            dock_session.camera_id = camera.id
            dock_session.state = SessionState.SYNCING
            records.record_clock(db, camera=camera, dock_session=dock_session, reading=reading, now=now)
            camera.battery_percent = dock_session.battery_percent = battery
            if storage is not None:
                camera.storage_free_bytes, camera.storage_total_bytes = storage
                dock_session.storage_free_bytes = storage[0]
            mismatches = (
                dock_flags.officer_mismatch(
                    device_serial=identity.device_serial,
                    officer_no=identity.officer_no,
                    source=identity.source,
                    disagreement=registration.officer_disagreement,
                    camera_id=camera.id,
                    now=now,
                ),
                dock_flags.serial_mismatch(
                    device_serial=identity.device_serial,
                    usb_serial=usb_serial or "",
                    source=identity.source,
                    camera_id=camera.id,
                    now=now,
                ),
            )
            flags.raise_flags([m for m in mismatches if m is not None], dock_session_id=dock_session_id)
            records.custody_event(
                db,
                self.audit,
                camera=camera,
                kind=CustodyKind.CHECK_IN,
                officer=camera.holder or registration.officer,
                actor=records.daemon_actor(self.device.port),
                now=now,
                dock_session=dock_session,
            )
            return camera.id, reading.offset_s

    def _ingest_volume(self, docked: _Docked) -> None:
        volume, dock_session_id, camera_id = docked.volume, docked.dock_session_id, docked.camera_id
        scan = scan_volume(
            volume, extensions=self.options.extensions, filename_patterns=self.options.filename_patterns
        )
        now = self.clock()
        with self.flags.transaction(self.catalog) as flags:
            db = flags.db
            for rejected in scan.rejected:
                self.summary.rejected.append(f"{rejected.path}: {rejected.reason}")
                decision = dock_flags.rejected_file(
                    camera_serial=docked.identity.device_serial,
                    camera_id=camera_id,
                    path=rejected.path,
                    reason=rejected.reason,
                    now=now,
                )
                flags.raise_flags([decision], dock_session_id=dock_session_id)
                self._log.warning("file_rejected", file=rejected.path, reason=rejected.reason)
            known = set(db.scalars(select(Recording.source_key).where(Recording.camera_id == camera_id)))
        keyed = [(source_key(item, volume), item) for item in scan.recordings]
        plan = [(key, item) for key, item in keyed if key not in known]
        # Same path, size and time as a stored recording is no proof of the same bytes: before such a
        # file is deleted it is read again. Without deletion it stays on the camera and is not read.
        recheck = [(key, item) for key, item in keyed if key in known and self.settings.delete_after_ingest]
        self.progress.plan(len(plan) + len(recheck), sum(item.size for _, item in plan + recheck))
        self.progress.set_state(SessionState.INGESTING.value)
        with self.catalog.transaction() as db:
            dock_session = db.get_one(DockVisit, dock_session_id)
            dock_session.state = SessionState.INGESTING
            dock_session.files_total = len(plan)
            dock_session.bytes_total = sum(item.size for _, item in plan)
        proven: list[_Proven] = []
        for rereading, files in ((False, plan), (True, recheck)):
            for key, item in files:
                if self.stopping.is_set():
                    raise _Interrupted
                outcome = self._ingest_file(docked, key, item, known=rereading)
                if outcome is not None:
                    proven.append(outcome)
        self._delete_proven(docked, proven)

    def _ingest_file(
        self, docked: _Docked, key: str, item: CardFile, *, known: bool, again: bool = False
    ) -> _Proven | None:
        """Read one camera file and store it, or for a `known` one prove it is already stored; returns
        the proof that allows its deletion, or None (the file stays on the camera)."""
        file_log = self._log.bind(file=item.name)
        self.progress.start_file(item.name)
        relative = Path(os.fsdecode(item.raw_path)).relative_to(docked.volume)
        try:
            with open_regular_nofollow(item.raw_path) as source:
                original = OriginalFile.of(relative, os.fstat(source.fileno()))
                outcome = self._read_source(docked, key, item, source, original, known=known)
                changed = original.differs_from(os.fstat(source.fileno()))
        except (Unplugged, DiskFullError, IntegrityError):
            raise
        except OSError as error:
            if not self.camera.present():
                raise Unplugged(f"{item.name}: {error.strerror}") from None
            self._file_failed(docked, item, f"read error: {error.strerror or error}")
            return None
        if outcome is None:
            return None
        if isinstance(outcome, _Proven):
            self.progress.finish_file(item.size)
            file_log.info("recording_reverified", digest=outcome.blake3, recording_id=outcome.recording_id)
            self.summary.reverified += 1
            if changed is not None:
                self._file_failed(docked, item, f"the file changed while it was read: {changed}")
                return None
            return outcome
        result = outcome.result
        self.progress.finish_file(result.size)
        try:
            recording_id, late = self._commit(docked, item, outcome)
        except _ObjectGoneError as gone:
            if again:
                raise
            # The purge took the stored copy: read the file again, which stores the bytes anew.
            file_log.warning("stored_copy_purged_meanwhile", reason=str(gone))
            return self._ingest_file(docked, key, item, known=known, again=True)
        self.summary.files += 1
        self.summary.bytes += result.size
        self.summary.copy_seconds += result.copy_seconds
        self.summary.read_back_seconds += result.read_back_seconds
        self.summary.deduplicated += int(result.deduplicated)
        self.summary.late += int(late)
        file_log.info(
            "recording_stored",
            digest=result.blake3,
            bytes=result.size,
            late=late,
            deduplicated=result.deduplicated,
            resumed_from=result.resumed_from,
            same_source_as=list(outcome.same_source_as) or None,
        )
        if changed is not None:
            # What was read is stored, but the camera file is not the one it was: the next dock reads it.
            self._file_failed(docked, item, f"the file changed while it was read: {changed}")
            return None
        if result.unread is not None:
            self._file_failed(docked, item, _not_reread(result.unread))
            return None
        # Proven means read whole in this session and re-read from disk with its BLAKE3 matching;
        # without read-back nothing is deleted.
        if not (result.read_back_verified and outcome.read_whole):
            return None
        return _Proven(original, recording_id, result.blake3, result.sha256)

    def _read_source(
        self,
        docked: _Docked,
        key: str,
        item: CardFile,
        source: BinaryIO,
        original: OriginalFile,
        *,
        known: bool,
    ) -> _Proven | _Stored | None:
        same_source_as: tuple[int, ...] = ()
        if known:
            digest = self.store.digest(source, progress=self._on_progress)
            match, free_key, same_source_as = self._stored_match(docked.camera_id, key, digest)
            if match is not None:
                if self._evicted(digest.blake3):
                    return self._store_again(
                        docked, item, source, original, recording_id=match, digest=digest
                    )
                unread = self._verify_stored(digest)
                if unread is not None:
                    self._file_failed(
                        docked,
                        item,
                        f"its stored copy was not re-read from the medium ({unread}); left on the camera",
                    )
                    return None
                return _Proven(original, match, digest.blake3, digest.sha256)
            if free_key is None:
                self._file_failed(
                    docked, item, "these bytes were stored and purged before; left on the camera"
                )
                return None
            key = free_key
            source.seek(0)
        result = self.store.put(
            source,
            resume_key=f"{docked.identity.device_serial}-{key}",
            expected_size=item.size,
            progress=self._on_progress,
            source_stamp=source_stamp(original),
        )
        read_whole = result.resumed_from == 0
        if not read_whole and self.settings.delete_after_ingest:
            # The resumed prefix was only sampled against the camera: read the file whole before it may go.
            source.seek(0)
            digest = self.store.digest(source, progress=self._on_progress)
            if digest == ExpectedObject(result.blake3, result.sha256, result.size):
                read_whole = True
            else:
                self._log.error(
                    "resumed_copy_differs",
                    file=item.name,
                    digest=result.blake3,
                    camera_digest=digest.blake3,
                    resumed_from=result.resumed_from,
                )
                source.seek(0)
                result = self.store.put(
                    source,
                    expected_size=item.size,
                    progress=self._on_progress,
                    source_stamp=source_stamp(original),
                )
                read_whole = True
        return _Stored(original, result, key, same_source_as, read_whole)

    def _stored_match(
        self, camera_id: int, key: str, digest: ExpectedObject
    ) -> tuple[int | None, str | None, tuple[int, ...]]:
        """For a file whose path, size and time match a recording of this camera, and whose bytes hash to
        `digest`: the live recording that holds these bytes (proof by the stored copy), else the key a
        new recording gets (None if both are taken) and the recordings it has the source of."""
        changed = changed_source_key(key, digest.blake3)
        with self.catalog.transaction() as db:
            rows = db.execute(
                select(Recording.id, Recording.source_key, Recording.blake3, Recording.purged_at).where(
                    Recording.camera_id == camera_id, Recording.source_key.in_((key, changed))
                )
            ).all()
        for row in rows:
            if row.blake3 == digest.blake3 and row.purged_at is None:
                return row.id, None, ()
        taken = {row.source_key for row in rows}
        free = next((candidate for candidate in (key, changed) if candidate not in taken), None)
        return None, free, tuple(row.id for row in rows if row.blake3 != digest.blake3)

    def _evicted(self, blake3: str) -> bool:
        with self.catalog.transaction() as db:
            return db.scalar(select(StoredObject.evicted_at).where(StoredObject.blake3 == blake3)) is not None

    def _store_again(
        self,
        docked: _Docked,
        item: CardFile,
        source: BinaryIO,
        original: OriginalFile,
        *,
        recording_id: int,
        digest: ExpectedObject,
    ) -> _Proven | None:
        """A known file whose object was evicted: no local copy to re-read, so the bytes are stored
        again (the put reads them back) and the object is local again, audited (`store.restore`)."""
        source.seek(0)
        result = self.store.put(
            source, expected_size=item.size, progress=self._on_progress, source_stamp=source_stamp(original)
        )
        if ExpectedObject(result.blake3, result.sha256, result.size) != digest:
            self._file_failed(docked, item, "the file changed while it was read")
            return None
        now = self.clock()
        with self.catalog.transaction() as db:
            # Under the row lock an eviction's removal (which needs `evicted_at`) cannot run meanwhile.
            stored = db.get_one(StoredObject, result.blake3, with_for_update=True, populate_existing=True)
            if not self.store.exists(result.blake3):
                self._file_failed(docked, item, "its stored copy was removed while it was stored again")
                return None
            if stored.evicted_at is not None:
                _make_local(stored, result, now)
                self.audit.append(
                    db,
                    actor=records.daemon_actor(self.device.port),
                    action=RESTORE_ACTION,
                    subject=f"object:{result.blake3}",
                    at=now,
                    details={
                        "camera": docked.identity.device_serial,
                        "path": item.name,
                        "recording": recording_id,
                        "seal": result.seal.value,
                        "read_back_verified": result.read_back_verified,
                    },
                )
        if result.unread is not None:
            self._file_failed(docked, item, _not_reread(result.unread))
            return None
        if not result.read_back_verified:
            return None
        return _Proven(original, recording_id, result.blake3, result.sha256)

    def _verify_stored(self, digest: ExpectedObject) -> str | None:
        """Re-read the stored object from disk now: the proof for a file stored on an earlier dock. Raises
        on a copy found wrong; returns why the re-read proves nothing (it read memory), or None."""
        problems = self.store.verify_object(digest.blake3, digest.sha256, digest.size)
        wrong = [problem for problem in problems if problem.kind is not ProblemKind.UNREAD]
        if wrong:
            raise ExistingObjectCorruptError(
                path=self.store.path_for(digest.blake3),
                detail="; ".join(f"{problem.kind.value}: {problem.detail}" for problem in wrong),
            )
        unread = [problem.detail for problem in problems if problem.kind is ProblemKind.UNREAD]
        return unread[0] if unread else None

    def _on_progress(self, done_in_file: int) -> None:
        self.progress.file_progress(done_in_file)
        now = time.monotonic()
        if self.unplugged.is_set():
            raise Unplugged("undocked")
        if now - self._last_presence_check >= self.settings.presence_check_interval_s:
            self._last_presence_check = now
            if not self.camera.present():
                raise Unplugged("device no longer present")

    def _commit(self, docked: _Docked, item: CardFile, copy: _Stored) -> tuple[int, bool]:
        """Catalog the stored copy and its audit event in one transaction; returns (recording id, late)."""
        result, key = copy.result, copy.key
        identity, offset, camera_id = docked.identity, docked.offset_s, docked.camera_id
        dock_session_id = docked.dock_session_id
        now = self.clock()
        recorded_at = corrected_recorded_at(item.recorded_at, offset)
        # Due a window after the recording ends; an unknown duration counts from the start (stricter).
        deadline = deadline_for(recording_end(recorded_at, item.duration_s), self.settings.deadline_window)
        with self.flags.transaction(self.catalog) as flags:
            db = flags.db
            # The purge removes bytes only under this row's lock, after checking that no live recording
            # needs them; so under the lock bytes that are here stay, and bytes it removed after the put
            # deduplicated into them must be stored again before a live row may point at them.
            stored = db.get(StoredObject, result.blake3, with_for_update=True, populate_existing=True)
            if stored is not None and not self.store.exists(result.blake3):
                raise _ObjectGoneError(blake3=result.blake3)
            if stored is None:
                db.add(
                    StoredObject(
                        blake3=result.blake3,
                        sha256=result.sha256,
                        size=result.size,
                        seal=result.seal,
                        stored_at=now,
                        last_verified_at=now if result.read_back_verified else None,
                    )
                )
                replication.enqueue_object(db, blake3=result.blake3, size=result.size, now=now)
            elif stored.removed_at is not None or stored.evicted_at is not None:
                # The same bytes came back after the purge or an eviction removed them.
                _make_local(stored, result, now)
            officer = records.officer_by_number(db, identity.officer_no) if identity.officer_no else None
            recording = Recording(
                camera_id=camera_id,
                officer_id=officer.id if officer else None,
                unit_id=officer.unit_id if officer else None,
                dock_session_id=dock_session_id,
                original_path=item.name,
                source_key=key,
                size=result.size,
                recorded_at_raw=item.recorded_at,
                recorded_at=recorded_at,
                recorded_at_source=item.recorded_at_source,
                clock_offset_s=offset,
                duration_s=item.duration_s,
                interruption=UNFINALIZED if item.unfinalized else None,
                ingested_at=now,
                deadline_at=deadline,
                blake3=result.blake3,
                sha256=result.sha256,
                retention_class=RetentionClass.ROUTINE,
                retention_tags=[],
                confidentiality=Confidentiality.NORMAL,
            )
            db.add(recording)
            db.flush()
            self.audit.append(
                db,
                actor=records.daemon_actor(self.device.port),
                action="recording.ingest",
                subject=f"recording:{recording.id}",
                at=now,
                details={
                    "camera": identity.device_serial,
                    "path": item.name,
                    "blake3": result.blake3,
                    "sha256": result.sha256,
                    "size": result.size,
                    "seal": result.seal.value,
                    "deduplicated": result.deduplicated,
                    "read_back_verified": result.read_back_verified,
                    "resumed_from": result.resumed_from,
                    # Recordings with this file's path, size and time but other bytes: the camera
                    # presented new content under an old name.
                    "same_source_as": [f"recording:{rid}" for rid in copy.same_source_as],
                },
            )
            late = evaluate_late(
                [DeadlineFacts(recording.id, identity.device_serial, now, deadline, camera_id)], now
            )
            flags.raise_flags(late, dock_session_id=dock_session_id)
            dock_session = db.get_one(DockVisit, dock_session_id)
            dock_session.files_done += 1
            dock_session.bytes_done += result.size
        crash_point(Step.CATALOG_COMMIT)
        return recording.id, bool(late)

    def _file_failed(self, docked: _Docked, item: CardFile, reason: str) -> None:
        dock_session_id, camera_id = docked.dock_session_id, docked.camera_id
        self.summary.errors += 1
        self._log.warning("file_failed", file=item.name, reason=reason)
        decision = dock_flags.failed_file(
            camera_serial=docked.identity.device_serial,
            camera_id=camera_id,
            dock_session_id=dock_session_id,
            file=item.name,
            reason=reason,
            now=self.clock(),
        )
        with self.flags.transaction(self.catalog) as flags:
            flags.raise_flags([decision], dock_session_id=dock_session_id)
            dock_session = flags.db.get_one(DockVisit, dock_session_id)
            dock_session.files_failed += 1

    def _delete_proven(self, docked: _Docked, proven: list[_Proven]) -> None:
        """Delete the proven files, each only if it is still the file that was read. The intent is on
        record before the first unlink, and every outcome after."""
        if not self.settings.delete_after_ingest or not proven:
            return
        by_path = {item.original.path: item for item in proven}
        with self.catalog.transaction() as db:
            # Counts only, so the event stays small however full the card: each file's path, recording
            # and digests are in its own recording.delete-original event.
            self._audit_deletion(
                db,
                docked,
                "started",
                self.clock(),
                files=len(proven),
                bytes=sum(item.original.size for item in proven),
            )
        originals = [item.original for item in proven]
        try:
            outcomes = self.camera.delete_originals(docked.volume, originals)
            crash_point(Step.CAMERA_DELETION)
        except DriverError as error:
            outcome = DeletionOutcome.REFUSED if isinstance(error, Unsupported) else DeletionOutcome.FAILED
            self._record_deletions(docked, by_path, [Deletion(o, outcome, str(error)) for o in originals])
            if isinstance(error, Unsupported):
                self._log.warning("delete_unsupported", reason=str(error))
                return
            raise
        self._record_deletions(docked, by_path, outcomes)

    def _audit_deletion(
        self, db: Session, docked: _Docked, outcome: str, at: datetime, **details: int
    ) -> None:
        """One `camera.delete-originals` event of this dock's deletion (see DELETE_ORIGINALS)."""
        self.audit.append(
            db,
            actor=records.daemon_actor(self.device.port),
            action=DELETE_ORIGINALS,
            subject=f"dock_session:{docked.dock_session_id}",
            outcome=outcome,
            at=at,
            details={"camera": docked.identity.device_serial, **details},
        )

    def _record_deletions(
        self, docked: _Docked, by_path: dict[Path, _Proven], outcomes: list[Deletion]
    ) -> None:
        now = self.clock()
        with self.catalog.transaction() as db:
            for deletion in outcomes:
                proof, original = by_path[deletion.file.path], deletion.file
                self.audit.append(
                    db,
                    actor=records.daemon_actor(self.device.port),
                    action="recording.delete-original",
                    subject=f"recording:{proof.recording_id}",
                    outcome=deletion.outcome.value,
                    at=now,
                    details={
                        "camera": docked.identity.device_serial,
                        "dock_session": docked.dock_session_id,
                        "path": shown_path(original.path),
                        "blake3": proof.blake3,
                        "sha256": proof.sha256,
                        "size": original.size,
                        "device": original.device,
                        "inode": original.inode,
                        "mtime_ns": original.mtime_ns,
                        "reason": deletion.reason,
                    },
                )
            counts = {kind.value: sum(d.outcome is kind for d in outcomes) for kind in DeletionOutcome}
            self._audit_deletion(db, docked, "done", now, **counts)
        for deletion in outcomes:
            if deletion.outcome is DeletionOutcome.DELETED:
                self.summary.deleted += 1
            else:
                self._log.warning(
                    "delete_" + deletion.outcome.value,
                    file=shown_path(deletion.file.path),
                    reason=deletion.reason,
                )

    def _flag_store_full(self, dock_session_id: int, full: DiskFullError) -> None:
        with self.flags.transaction(self.catalog) as flags:
            decision = dock_flags.store_full(
                camera_serial=self.summary.device_id,
                camera_id=flags.db.get_one(DockVisit, dock_session_id).camera_id,
                dock_session_id=dock_session_id,
                error=str(full),
                free_bytes=self.store.free_bytes(),
                now=self.clock(),
            )
            flags.raise_flags([decision], dock_session_id=dock_session_id)

    def _end(self, state: SessionState, reason: str) -> None:
        self.summary.state = state
        self.summary.reason = reason

    def _close_session(self, dock_session_id: int) -> None:
        with self.catalog.transaction() as db:
            dock_session = db.get_one(DockVisit, dock_session_id)
            dock_session.state = self.summary.state
            dock_session.failure_reason = self.summary.reason
            dock_session.ended_at = self.clock()
        crash_point(Step.SESSION_CLOSE)
        self.audit.anchor(self.catalog)  # the session's last event is now covered by a signed checkpoint
        summary = self.summary
        self._log.info(
            "ingest_summary",
            state=summary.state.value,
            reason=summary.reason,
            files=summary.files,
            bytes=summary.bytes,
            seconds=round(summary.seconds, 3),
            copy_seconds=round(summary.copy_seconds, 3),
            read_back_seconds=round(summary.read_back_seconds, 3),
            mib_per_s=round(summary.mib_per_s, 1),
            late=summary.late,
            errors=summary.errors,
            rejected=len(summary.rejected),
            deduplicated=summary.deduplicated,
            deleted=summary.deleted,
            reverified=summary.reverified,
        )


def _make_local(stored: StoredObject, result: PutResult, now: datetime) -> None:
    """A purged or evicted object whose bytes were just put again: local and live, with the seal and
    read-back proof of this put."""
    if stored.removed_at is not None:
        stored.removed_at = None
        stored.stored_at = now
    stored.evicted_at = None
    stored.seal = result.seal
    stored.last_verified_at = now if result.read_back_verified else None


def _not_reread(unread: str) -> str:
    """A failed file's reason when its read-back could have read memory: `PutResult.unread` says why."""
    return f"stored, but not re-read from the medium ({unread}); left on the camera"
