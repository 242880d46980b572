"""The dock manager: one ingest session per docked port, a bounded number copying at once.

Each port's session runs on its own thread, so a stalled or failing camera never blocks the others. A
semaphore bounds how many copy at once; a waiting session shows as "queued". Progress lives in memory
and is written to the `docks` table by `flush_progress`, which the supervising loop calls about 1 Hz.

A dock whose copy stays below `ingest.slow_rate_floor_mib_s` for `ingest.slow_rate_seconds` gives its
slot back (`release_slow_slots`, also ~1 Hz) so a queued camera starts. It keeps copying: nothing is
paused or dropped, it just no longer counts against the cap, and it never takes a slot back.

A camera docked without its volume gets it from a later `StorageArrived`. One that leaves its port
inside its session's re-enumeration grace (after SetMSDC, before the mount) is not undocked: its
session waits for it, and a `Docked` on that port is the camera coming back with its storage. Both are
handed to the session only when `identity_refusal` finds them the camera's; a refused device docks on
its own once that session has ended. No check-out and no check-in in between; a camera that does not
come back is checked out once, when its session has ended.

Nothing here waits on a session from the supervising loop, which pings the systemd watchdog: an undock
tells the session to end and returns; `reap` (each loop tick) writes the check-out once the session has
ended, and only then starts a dock that arrived on that port meanwhile. Only `stop` waits, bounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from sqlalchemy import select

from drivers.base import DeviceInfo, Driver, DriverError, DriverOptions
from ingestd import records
from ingestd.docking.events import Docked, DockEvent, StorageArrived, Undocked
from ingestd.policies.custody import attribute_checkout
from ingestd.progress import DockProgress, SlowCopyWatch
from ingestd.services import Services
from ingestd.session import (
    DELETE_ORIGINALS,
    IngestSettings,
    SessionSummary,
    StorageHandover,
    run_session,
)
from store.audit import Actor
from store.models import AuditEvent, Camera, CustodyKind, Dock, DockVisit, SessionState

log = structlog.get_logger()


@dataclass
class _Slot:
    port: str
    slow_watch: SlowCopyWatch  # read and fed by the supervising loop only
    progress: DockProgress = field(default_factory=DockProgress)
    unplugged: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    summary: SessionSummary | None = None
    device_serial: str | None = None
    holds_copy_slot: bool = False  # guarded by the manager's lock
    device: DeviceInfo | None = None  # as docked: whom a re-enumerated device must match
    storage: StorageHandover = field(default_factory=StorageHandover)


USB_SERIAL = "ID_SERIAL_SHORT"


def identity_refusal(
    docked: Mapping[str, str],
    appeared: Mapping[str, str],
    *,
    reported_serial: str | None,
    same_usb_device: bool,
) -> str | None:
    """Why a device or disk that appeared on a docked camera's port is not shown to be that camera's;
    None where it is. `docked` and `appeared` are USB properties; `reported_serial` is the device serial
    the camera reported over its authenticated control channel; `same_usb_device` says the grouping
    alone ties it to the USB device that docked.

    The USB serial binds it where the dock had one. Where the dock had none, only a USB serial equal to
    the reported device serial does, or being that very USB device. USB IDs are not compared: a camera
    may change its product ID as it switches to mass storage, and behind a hub its tty and disk are
    devices of different makers. A USB gadget can present any serial: this tells the camera's storage
    from another honest device on the port, not from one built to pass as it."""
    before, after = docked.get(USB_SERIAL), appeared.get(USB_SERIAL)
    if before:
        if after == before:
            return None
        shown = f"USB serial {after!r}" if after else "no USB serial"
        return f"it shows {shown}, the camera docked with USB serial {before!r}"
    if same_usb_device:
        return None
    if after and after == reported_serial:
        return None
    return (
        f"the camera docked without a USB serial and this shows "
        f"{f'USB serial {after!r}' if after else 'none'}, not the device serial the camera reported "
        f"({reported_serial!r})"
    )


class DockManager:
    def __init__(
        self,
        services: Services,
        settings: IngestSettings,
        *,
        max_concurrent: int,
        clock: Callable[[], datetime],
        on_summary: Callable[[SessionSummary], None] | None = None,
        slow_rate_floor_bps: float = 0.0,
        slow_rate_seconds: float = 120.0,
    ) -> None:
        self.services = services
        self.settings = settings
        self.clock = clock
        self.slow_rate_floor_bps = slow_rate_floor_bps
        self.slow_rate_seconds = slow_rate_seconds
        self.stopping = threading.Event()
        self._copy_slots = threading.BoundedSemaphore(max_concurrent)
        self._slots: dict[str, _Slot] = {}
        # Undocked, their session still ending; and a dock that came back to such a port meanwhile.
        self._retiring: dict[str, _Slot] = {}
        self._waiting: dict[str, Docked] = {}
        self._lock = threading.Lock()
        self._on_summary = on_summary

    # -- events -------------------------------------------------------------------------------------

    def handle(self, event: DockEvent) -> None:
        if isinstance(event, Docked):
            self._docked(event)
        elif isinstance(event, StorageArrived):
            self._storage_arrived(event)
        else:
            self._undocked(event)

    def _docked(self, event: Docked) -> None:
        with self._lock:
            if event.port in self._retiring:
                # The port's previous session has not ended yet: one session per camera at a time.
                self._waiting[event.port] = event
                log.info(
                    "dock_waiting", port=event.port, detail="the previous session on this port is ending"
                )
                return
            existing = self._slots.get(event.port)
            if existing is not None and existing.thread is not None and existing.thread.is_alive():
                if existing.storage.awaiting:
                    self._came_back(existing, event)
                elif existing.storage.detached:  # it left as its volume was mounted: that session ends
                    self._waiting[event.port] = event
                    log.info("dock_waiting", port=event.port, detail="the session on this port is ending")
                else:
                    log.warning("dock_busy", port=event.port)
                return
            match = self.services.registry.match(event.device)
            if match is None:
                return  # logged once by the registry
            slot = _Slot(
                port=event.port,
                slow_watch=SlowCopyWatch(self.slow_rate_floor_bps, self.slow_rate_seconds),
                progress=DockProgress(self.services.config.dock_label(event.port)),
                device=event.device,
            )
            self._slots[event.port] = slot
        driver, options = match
        thread = threading.Thread(
            target=self._session, args=(slot, event, driver, options), name=f"dock:{event.port}", daemon=True
        )
        slot.thread = thread
        thread.start()

    def _came_back(self, slot: _Slot, event: Docked) -> None:
        """A device docked on a port whose session awaits its camera's storage (the manager's lock is
        held): the camera re-enumerated in mass-storage mode, if it is the same camera."""
        if not self._same_camera(
            slot, event.device.properties, "reenumerated_device_refused", same_usb_device=False
        ):
            if slot.storage.detached:
                self._waiting[event.port] = event  # its own dock, once that session has ended
            return
        if event.device.block is None:
            log.info("camera_back_without_storage", port=event.port, detail="its volume follows")
            return
        usb_serial = event.device.properties.get(USB_SERIAL)
        log.info("camera_reenumerated", port=event.port, block=event.device.block, usb_serial=usb_serial)
        slot.storage.offer(event.device.block, event.device.properties.get("DISKSEQ"))

    def _storage_arrived(self, event: StorageArrived) -> None:
        with self._lock:
            slot = self._slots.get(event.port)
            alive = slot is not None and slot.thread is not None and slot.thread.is_alive()
        if slot is None or not alive:
            log.info("storage_without_session", port=event.port, block=event.block)
            return
        # Grouped by USB device, the disk is an interface of the device that docked (the grouper saw no
        # remove since); behind a hub it may be any device there.
        own_device = self.services.config.detection.usb_grouping == "device"
        if not self._same_camera(slot, event.properties, "storage_refused", same_usb_device=own_device):
            return
        log.info("storage_arrived", port=event.port, block=event.block)
        slot.storage.offer(event.block, event.properties.get("DISKSEQ"))

    def _same_camera(
        self, slot: _Slot, properties: Mapping[str, str], refused_event: str, *, same_usb_device: bool
    ) -> bool:
        """Whether a device or disk that appeared on the port of `slot`'s camera is that camera's;
        logs the refusal as `refused_event` where it is not."""
        assert slot.device is not None  # noqa: S101 - set with the slot
        reported = slot.storage.device_serial
        refusal = identity_refusal(
            slot.device.properties, properties, reported_serial=reported, same_usb_device=same_usb_device
        )
        if refusal is not None:
            log.error(
                refused_event,
                port=slot.port,
                usb_serial=properties.get(USB_SERIAL),
                expected_usb_serial=slot.device.properties.get(USB_SERIAL),
                reported_serial=reported,
                detail=refusal,
            )
        return refusal is None

    def _session(self, slot: _Slot, event: Docked, driver: Driver, options: DriverOptions) -> None:
        bound = log.bind(port=event.port)
        slot.progress.set_state("queued")
        self._copy_slots.acquire()
        with self._lock:
            slot.holds_copy_slot = True
        try:
            if self.stopping.is_set():
                return
            try:
                camera = driver.open(event.device, options)
            except DriverError as error:
                bound.error("camera_open_failed", error=str(error))
                self._record_open_failure(event.port, str(error))
                return
            try:
                summary = run_session(
                    self.services,
                    camera,
                    device=event.device,
                    driver_name=driver.name,
                    options=options,
                    settings=self.settings,
                    clock=self.clock,
                    progress=slot.progress,
                    unplugged=slot.unplugged,
                    stopping=self.stopping,
                    storage=slot.storage,
                )
            except Exception:  # noqa: BLE001 - a bug in one session must not take the daemon down
                bound.exception("session_crashed")
                return
        finally:
            self._give_back_copy_slot(slot)
        slot.summary = summary
        slot.device_serial = summary.device_id
        slot.progress.set_state(summary.state.value)
        if self._on_summary is not None:
            self._on_summary(summary)

    def _give_back_copy_slot(self, slot: _Slot) -> bool:
        """Release the slot's place in the cap, once: by the session at its end, or early when slow."""
        with self._lock:
            if not slot.holds_copy_slot:
                return False
            slot.holds_copy_slot = False
        self._copy_slots.release()
        return True

    def _record_open_failure(self, port: str, reason: str) -> None:
        now = self.clock()
        with self.services.catalog.transaction() as db:
            dock_session = records.open_dock_session(db, port, now)
            dock_session.state = SessionState.FAILED
            dock_session.failure_reason = reason
            dock_session.ended_at = now

    def _undocked(self, event: Undocked) -> None:
        """Tell the port's session to end and return at once; `reap` checks the camera out after it."""
        with self._lock:
            if self._waiting.pop(event.port, None) is not None:
                return  # a dock that never started, taken out again
            slot = self._slots.get(event.port)
            if slot is None:
                return
            if slot.thread is not None and slot.thread.is_alive() and slot.storage.detach():
                log.info(
                    "camera_reenumerating",
                    port=event.port,
                    reenumerate_s=self.settings.reenumerate_s,
                    detail="it left its port after SetMSDC; its session waits for it to come back",
                )
                return
            del self._slots[event.port]
            slot.unplugged.set()
            if slot.thread is not None and slot.thread.is_alive():
                self._retiring[event.port] = slot
                return
        self._after_undock(slot)

    def reap(self) -> None:
        """Finish the undock of each session that has ended since, then start a dock that waited for it
        (called each tick of the supervising loop; never waits)."""
        with self._lock:
            ended = [slot for slot in self._retiring.values() if not (slot.thread and slot.thread.is_alive())]
            for slot in ended:
                del self._retiring[slot.port]
            # Left inside the re-enumeration grace and never came back: undocked now that it has ended.
            gone = [
                slot
                for slot in self._slots.values()
                if slot.storage.detached and not (slot.thread and slot.thread.is_alive())
            ]
            for slot in gone:
                del self._slots[slot.port]
            ended += gone
        for slot in ended:
            self._after_undock(slot)
            with self._lock:
                waiting = self._waiting.pop(slot.port, None)
            if waiting is not None and not self.stopping.is_set():
                self._docked(waiting)

    def _after_undock(self, slot: _Slot) -> None:
        serial = slot.device_serial or (slot.summary.device_id if slot.summary else None)
        if serial is not None:
            self.check_out_on_undock(slot.port, serial)
        self._set_dock_empty(slot.port)

    def check_out_on_undock(self, port: str, device_serial: str) -> None:
        """Undock is check-out, to the camera's assigned officer unless a clerk named someone else."""
        now = self.clock()
        with self.services.catalog.transaction() as db:
            camera = db.scalar(select(Camera).where(Camera.device_serial == device_serial))
            if camera is None:
                return
            assigned = camera.assigned_officer.officer_no if camera.assigned_officer else None
            attribution = attribute_checkout(
                explicit_officer_no=None, clerk_user=None, assigned_officer_no=assigned
            )
            officer = (
                records.officer_by_number(db, attribution.officer_no) if attribution.officer_no else None
            )
            records.custody_event(
                db,
                self.services.audit,
                camera=camera,
                kind=CustodyKind.CHECK_OUT,
                officer=officer,
                actor=records.daemon_actor(port),
                now=now,
                note=f"undocked ({attribution.basis})",
            )
        self.services.audit.anchor(self.services.catalog)  # sign the check-out: it ends the dock

    def _set_dock_empty(self, port: str) -> None:
        with self.services.catalog.transaction() as db:
            dock = db.scalar(select(Dock).where(Dock.port == port))
            if dock is not None:
                dock.state = "empty"
                dock.current_file = None
                dock.rate_bps = dock.eta_s = None
                dock.updated_at = self.clock()

    # -- supervision --------------------------------------------------------------------------------

    def active_ports(self) -> list[str]:
        with self._lock:
            slots = [*self._slots.values(), *self._retiring.values()]
        return sorted(slot.port for slot in slots if slot.thread and slot.thread.is_alive())

    def release_slow_slots(self, now: float) -> list[str]:
        """Give back the copy slot of each dock that copied below the floor for a whole window (`now` is
        monotonic seconds; called ~1 Hz by the supervising loop). Returns those ports."""
        with self._lock:
            holding = [slot for slot in self._slots.values() if slot.holds_copy_slot]
        released: list[str] = []
        for slot in holding:
            copying, bytes_done = slot.progress.copying()
            if not copying:
                slot.slow_watch.restart()
                continue
            rate = slot.slow_watch.observe(now, bytes_done)
            if rate is not None and self._give_back_copy_slot(slot):
                released.append(slot.port)
                log.warning(
                    "copy_slot_released",
                    port=slot.port,
                    rate_bps=round(rate),
                    floor_bps=slot.slow_watch.floor_bps,
                    over_s=slot.slow_watch.window_s,
                    detail="copying below the floor; it goes on without counting against max_concurrent",
                )
        return released

    def flush_progress(self) -> None:
        """Persist each live transfer's progress (called ~1 Hz; never from the copy loop)."""
        with self._lock:
            slots = [(port, slot) for port, slot in self._slots.items()]
        if not slots:
            return
        now = self.clock()
        with self.services.catalog.transaction() as db:
            for port, slot in slots:
                snap = slot.progress.snapshot()
                dock = records.get_or_create_dock(db, port, now)
                dock.state = snap.state
                dock.current_file = snap.current_file
                dock.bytes_done = snap.bytes_done
                dock.bytes_total = snap.bytes_total
                dock.rate_bps = snap.rate_bps
                dock.eta_s = snap.eta_s
                dock.updated_at = now

    def stop(self, timeout: float) -> None:
        """Ask every session to stop after its current durable step, and wait for them all for at most
        `timeout` seconds in total; then finish the undocks of those that ended."""
        self.stopping.set()
        with self._lock:
            slots = [*self._slots.values(), *self._retiring.values()]
        deadline = time.monotonic() + timeout
        for slot in slots:
            if slot.thread is not None:
                slot.thread.join(max(0.0, deadline - time.monotonic()))
        running = sorted(slot.port for slot in slots if slot.thread and slot.thread.is_alive())
        if running:
            log.warning("sessions_still_running", ports=running, waited_s=timeout)
        self.reap()


RECONCILE_ACTOR = Actor.system(source="reconcile")


def interrupted_sessions(services: Services, now: datetime) -> int:
    """Reconciliation: sessions a crash left open are closed as interrupted; docks start empty. A
    deletion of originals the crash cut short is closed on record as interrupted: which files went is
    not known, and the next dock shows what the camera still holds."""
    with services.catalog.transaction() as db:
        open_sessions = db.scalars(select(DockVisit).where(DockVisit.ended_at.is_(None))).all()
        for dock_session in open_sessions:
            dock_session.state = SessionState.INTERRUPTED
            dock_session.failure_reason = "daemon stopped before the session ended"
            dock_session.ended_at = now
            subject = f"dock_session:{dock_session.id}"
            outcomes = set(
                db.scalars(
                    select(AuditEvent.outcome).where(
                        AuditEvent.action == DELETE_ORIGINALS, AuditEvent.subject == subject
                    )
                )
            )
            if "started" in outcomes and "done" not in outcomes:
                services.audit.append(
                    db,
                    actor=RECONCILE_ACTOR,
                    action=DELETE_ORIGINALS,
                    subject=subject,
                    outcome="interrupted",
                    at=now,
                    details={"reason": "the daemon stopped during the deletion; per-file outcomes unknown"},
                )
        for dock in db.scalars(select(Dock)).all():
            dock.state = "empty"
            dock.current_file = None
            dock.rate_bps = dock.eta_s = None
            dock.updated_at = now
        return len(open_sessions)
