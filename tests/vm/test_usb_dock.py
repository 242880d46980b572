"""Docking over a real kernel USB stack: QEMU's usb-serial and usb-storage behind a hub, in a guest.

One guest for the module; each test plugs its own camera into its own root port and starts the daemon
afresh, then stops it (SIGTERM) before reading the catalog file on the share from the host.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from store.models import Camera, ClockReading, CustodyEvent, CustodyKind, DockSession, Recording, SessionState
from tests.system.harness import iter_rows
from tests.system.test_daemon import digests_of
from tests.vm.machine import Guest
from tests.vm.station import GuestStation, UsbCamera, guest_daemon

pytestmark = pytest.mark.vm

MODULES = ("usb-storage", "ftdi_sio", "vfat", "exfat")


@pytest.fixture(scope="module")
def station(guest: Guest) -> GuestStation:
    guest.check("modprobe", "-a", *MODULES)
    return GuestStation(guest, guest_daemon(guest))


@pytest.fixture
def cameras(guest: Guest) -> Iterator[list[UsbCamera]]:
    made: list[UsbCamera] = []
    yield made
    for camera in made:
        camera.close()


def test_serial_and_disk_behind_one_hub_dock_as_one_camera_synced_ingested_and_wiped(
    guest: Guest, station: GuestStation, cameras: list[UsbCamera]
) -> None:
    camera = UsbCamera.build(guest.base / "cameras", "0000001", hub="1", drift_s=4.0, battery=71, files=3)
    cameras.append(camera)
    expected = digests_of(camera.camera.recordings())
    assert len(expected) == 3
    station.start()
    try:
        camera.plug(guest, guest.base)
        (summary,) = station.wait_summaries(1)
    finally:
        station.stop()
    low, high = guest.clock_behind_host()
    assert summary["state"] == "done", summary
    assert (summary["files"], summary["deleted"], summary["errors"]) == (3, 3, 0)
    assert summary["port"].endswith("/usb1/1-1")  # the hub's DEVPATH: one dock for both devices
    assert camera.card_files() == []  # wiped from the card, after proof

    catalog = station.catalog()
    try:
        (session,) = [row[0] for row in iter_rows(catalog, select(DockSession))]
        assert session.state is SessionState.DONE
        assert session.battery_percent == 71
        # Measured in the guest, against the guest's clock: the camera's 4 s plus the guest's own lag.
        assert session.clock_offset_s is not None
        assert 4.0 + low - 0.1 <= session.clock_offset_s <= 4.0 + high + 0.1
        stored = {row[0] for row in iter_rows(catalog, select(Recording.blake3).join(Camera))}
        assert stored == expected
        (reading,) = [row[0] for row in iter_rows(catalog, select(ClockReading))]
        assert reading.state == "synced"  # read back within 50 ms of the guest's clock after setting
        assert reading.residual_s is not None
        assert abs(reading.residual_s) < 0.05
        kinds = [row[0] for row in iter_rows(catalog, select(CustodyEvent.kind))]
        assert kinds == [CustodyKind.CHECK_IN]
        (device_serial,) = [row[0] for row in iter_rows(catalog, select(Camera.device_serial))]
        assert device_serial == "0000001"
    finally:
        catalog.close()
