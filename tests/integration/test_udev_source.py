"""`detection.udev_source = "auto"` on real Unix sockets: udevd's events only when a udevd answers."""

from __future__ import annotations

import socket
from pathlib import Path

from ingestd.docking.udev import choose_source


def test_auto_picks_udev_only_when_something_answers_on_the_control_socket(tmp_path: Path) -> None:
    control = tmp_path / "control"
    assert choose_source("auto", control) == (
        "kernel",
        f"auto: udevd is not running (nothing answers at {control})",
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as udevd:  # as udevd listens
        udevd.bind(str(control))
        udevd.listen(1)
        assert choose_source("auto", control) == ("udev", f"auto: udevd answers at {control}")
    # udevd gone, its socket file left behind: nothing accepts, so the kernel's events.
    assert control.exists()
    assert choose_source("auto", control)[0] == "kernel"
    # An explicit setting is obeyed whatever runs.
    assert choose_source("udev", control) == ("udev", "set in the config")
    assert choose_source("kernel", control) == ("kernel", "set in the config")
