"""sd_notify(3) over $NOTIFY_SOCKET, without libsystemd. A no-op when not run by systemd."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 datagrams to the service manager."""

    def __init__(self, address: str | None = None) -> None:
        self._address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        # An abstract socket is written "@name" in the environment and "\0name" to the kernel.
        if self._address and self._address.startswith("@"):
            self._address = "\0" + self._address[1:]

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *fields: str) -> bool:
        if not self._address:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto("\n".join(fields).encode(), self._address)
            except OSError:
                return False  # systemd gone or socket removed: nothing useful to do about it
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")


def watchdog_interval_s() -> float | None:
    """Half of WatchdogSec (systemd's advice), when this process is the one being watched."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


def parse_notification(datagram: bytes) -> dict[str, str]:
    """The KEY=VALUE fields of one sd_notify datagram (what a service manager receives)."""
    fields: dict[str, str] = {}
    for line in datagram.decode("utf-8", "replace").splitlines():
        key, separator, value = line.partition("=")
        if separator:
            fields[key] = value
    return fields
