"""sd_notify datagrams reach a real Unix datagram socket in systemd's format."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from ingestd.sdnotify import Notifier, parse_notification, watchdog_interval_s


def test_messages_arrive_on_the_notify_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        notifier = Notifier(str(path))
        assert notifier.ready("reconciled 0 partials")
        assert server.recv(4096) == b"READY=1\nSTATUS=reconciled 0 partials"
        assert notifier.watchdog()
        assert server.recv(4096) == b"WATCHDOG=1"


def test_abstract_socket_address_is_translated() -> None:
    name = f"ingestd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        assert Notifier("@" + name).status("ok")
        assert server.recv(4096) == b"STATUS=ok"


def test_without_systemd_it_is_a_quiet_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.ready("x") is False


def test_watchdog_interval_is_half_of_watchdog_sec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval_s() is None


def test_notification_fields_are_parsed_and_junk_lines_ignored() -> None:
    fields = parse_notification(b"READY=1\nSTATUS=a=b c\njunk\n")
    assert fields == {"READY": "1", "STATUS": "a=b c"}
