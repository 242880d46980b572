"""Serve a simulated camera on a real pty, so the driver under test opens a tty like any other.

The server owns the master side; `slave_path` is what the driver opens. It holds no slave descriptor
itself, so when the driver closes the tty the master reads EIO: that ends the camera's session (as a
dropped DTR would) and the next session must authenticate again. Closing the master (on stop or an
injected disconnect) is what the driver sees as a hangup.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import select
import threading
import tty
from collections.abc import Callable
from dataclasses import dataclass

from drivers import protocol as p
from drivers.simulator.camera import SimulatedCamera
from drivers.simulator.faults import ALWAYS, Faults

POLL_S = 0.05  # how often the serving thread looks at its stop event
IDLE_S = 0.01  # how often it looks for a driver while none has the tty open


@dataclass
class _Remaining:
    """Fault counts still to apply; reset whenever faults are replaced."""

    bad_crc: int
    truncate: int
    silence: int
    busy: int

    @classmethod
    def of(cls, faults: Faults) -> _Remaining:
        return cls(faults.bad_crc, faults.truncate, faults.silence, faults.busy)

    def take(self, name: str) -> bool:
        left: int = getattr(self, name)
        if left == 0:
            return False
        if left != ALWAYS:
            setattr(self, name, left - 1)
        return True


class PtyServer:
    """A simulated camera behind a pty. Use as a context manager, or call `start()` and `stop()`."""

    def __init__(
        self,
        camera: SimulatedCamera,
        faults: Faults | None = None,
        *,
        seed: int = 0,
        on_mass_storage: Callable[[], object] | None = None,
    ) -> None:
        self.camera = camera
        # Called once the reply to a SetMSDC that switched the camera to mass storage is sent: where a
        # real camera re-enumerates (its control interface drops, its storage appears).
        self._on_mass_storage = on_mass_storage
        self._faults = faults or Faults()
        self._remaining = _Remaining.of(self._faults)
        self._fault_lock = threading.Lock()
        self._random = random.Random(seed)  # noqa: S311  # garbage bytes, not secrets
        self._master, slave = os.openpty()
        try:
            tty.setraw(slave)  # kept by the tty while the master lives, across driver sessions
            self.slave_path = os.ttyname(slave)
        finally:
            os.close(slave)
        self.stop_event = threading.Event()
        self.disconnected = threading.Event()  # set once the master is closed
        self._served = 0
        self.received = 0  # request frames decoded, answered or not
        self._thread = threading.Thread(target=self._serve, name=f"pty-camera {self.slave_path}", daemon=True)

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        """Replace the faults mid-session; counts start afresh."""
        with self._fault_lock:
            self._faults = faults
            self._remaining = _Remaining.of(faults)

    def start(self) -> PtyServer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self.stop_event.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._close()

    def __enter__(self) -> PtyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _close(self) -> None:
        master, self._master = self._master, -1
        if master >= 0:
            with contextlib.suppress(OSError):
                os.close(master)
        self.disconnected.set()

    def _serve(self) -> None:
        decoder = p.FrameDecoder()
        attached = False
        try:
            while not self.stop_event.is_set() and self._master >= 0:
                ready, _, _ = select.select([self._master], [], [], POLL_S)
                if not ready:
                    continue
                try:
                    data = os.read(self._master, 4096)
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    if attached:  # the driver closed the tty: its session is over
                        attached = False
                        self.camera.end_session()
                        decoder.reset()
                    self.stop_event.wait(IDLE_S)
                    continue
                attached = True
                frames = decoder.feed(data)
                for rejection in decoder.drain_rejections():
                    if rejection.reason == "crc" and rejection.seq is not None and rejection.code is not None:
                        self._send(self.camera.crc_failure(rejection.seq, rejection.code), corruptible=False)
                for frame in frames:
                    if not self._answer(frame):
                        return
        finally:
            if self.stop_event.is_set() or self.disconnected.is_set():
                self._close()

    def _answer(self, frame: p.Frame) -> bool:
        """Reply to one request with the faults applied; False once the link is cut."""
        with self._fault_lock:
            self.received += 1
            faults = self._faults
            if faults.disconnect_after is not None and self._served >= faults.disconnect_after:
                self._close()  # mid-command: the request arrived, no reply ever will
                return False
            self._served += 1
            silent = self._remaining.take("silence")
            busy = not silent and self._remaining.take("busy")
        if silent:
            return True
        switched = False
        if busy:
            reply = p.encode_error_reply(frame.seq, frame.code, p.Status.BUSY, "busy")
        else:
            before = self.camera.msc_mode
            reply = self.camera.handle(frame)
            switched = self.camera.msc_mode and not before
        if faults.slow_ms and self.stop_event.wait(faults.slow_ms / 1000):
            return False
        self._send(reply, corruptible=True)
        if switched and self._on_mass_storage is not None:
            self._on_mass_storage()
        return True

    def _send(self, reply: bytes, *, corruptible: bool) -> None:
        with self._fault_lock:
            garbage = self._faults.garbage
            bad_crc = corruptible and self._remaining.take("bad_crc")
            truncate = corruptible and not bad_crc and self._remaining.take("truncate")
        if bad_crc:
            reply = reply[:-1] + bytes([reply[-1] ^ 0xFF])
        if truncate:
            reply = reply[: len(reply) // 2]
        if garbage:
            reply = self._garbage() + reply
        with contextlib.suppress(OSError):  # the driver may have gone; the next read tells
            os.write(self._master, reply)

    def _garbage(self) -> bytes:
        """Noise that a naive decoder would trip on: random bytes, a lone magic, fake headers."""
        noise = bytes(self._random.randrange(256) for _ in range(self._random.randrange(1, 24)))
        over_long = p.MAGIC + (p.MAX_PAYLOAD + 1).to_bytes(2, "big") + b"\x00\x00"
        plausible = p.MAGIC + (40).to_bytes(2, "big") + b"\x07\x85"  # waits for bytes never sent
        return noise + p.MAGIC[:1] + over_long + noise[:3] + plausible
