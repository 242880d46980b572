"""The bay display's pure checks."""

from __future__ import annotations

import pytest

from ingestd.bay.server import host_allowed
from ingestd.config import short_port_name


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:8947", True),
        ("[::1]:8947", True),
        ("localhost", True),
        ("10.1.2.3", True),
        ("attacker.example:8947", False),
        ("127.0.0.1.nip.io", False),
        ("", False),
        (None, False),
    ],
)
def test_host_header_is_an_address_or_localhost(host: str | None, allowed: bool) -> None:
    assert host_allowed(host) is allowed


def test_a_dock_without_a_label_gets_the_last_part_of_its_port() -> None:
    assert short_port_name("/devices/pci0000:00/0000:00:14.0/usb1/1-4") == "1-4"
    assert short_port_name("folder:/srv/docks/bay-3/") == "bay-3"
