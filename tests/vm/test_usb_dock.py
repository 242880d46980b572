"""Docking over a real kernel USB stack: QEMU's usb-serial and usb-storage behind a hub, in a guest.

One guest for the module; each test plugs its own camera into its own root port and starts the daemon
afresh, then stops it (SIGTERM) before reading the catalog file on the share from the host.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from store.models import Camera, ClockReading, CustodyEvent, CustodyKind, DockVisit, Recording, SessionState
from tests.system.harness import iter_rows, wait_for
from tests.system.test_daemon import digests_of
from tests.vm.machine import Guest
from tests.vm.station import GuestStation, UsbCamera, guest_daemon

pytestmark = pytest.mark.vm

MODULES = ("usb-storage", "ftdi_sio", "vfat", "exfat")
UDEVD = "/usr/lib/systemd/systemd-udevd"  # as virtme-ng's init starts it


@pytest.fixture(scope="module")
def modules(guest: Guest) -> None:
    guest.check("modprobe", "-a", *MODULES)


@pytest.fixture
def station(guest: Guest, modules: None, request: pytest.FixtureRequest) -> GuestStation:
    """A station of its own for each test: a fresh catalog and log, in the module's guest."""
    return GuestStation(guest, guest_daemon(guest, request.node.name[:40]))


@pytest.fixture
def cameras(guest: Guest) -> Iterator[list[UsbCamera]]:
    made: list[UsbCamera] = []
    yield made
    for camera in made:  # out of the guest, so the next test's daemon does not dock them again at start
        camera.unplug(guest)
        camera.close()


def test_serial_and_disk_behind_one_hub_dock_as_one_camera_synced_ingested_and_wiped(
    guest: Guest, station: GuestStation, cameras: list[UsbCamera]
) -> None:
    camera = UsbCamera.build(guest.base / "cameras", "0000001", hub="1", drift_s=4.0, battery=71, files=3)
    cameras.append(camera)
    expected = digests_of(camera.camera.recordings())
    assert len(expected) == 3
    summary = station.ingest(camera)
    low, high = guest.clock_behind_host()
    assert summary["state"] == "done", summary
    assert (summary["files"], summary["deleted"], summary["errors"]) == (3, 3, 0)
    assert summary["port"].endswith("/usb1/1-1")  # the hub's DEVPATH: one dock for both devices
    assert camera.card_files() == []  # wiped from the card, after proof

    catalog = station.catalog()
    try:
        (session,) = [row[0] for row in iter_rows(catalog, select(DockVisit))]
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


def test_a_usb_disk_no_rule_matches_is_left_alone_and_logged(
    guest: Guest, station: GuestStation, cameras: list[UsbCamera]
) -> None:
    # A thumb drive: QEMU's usb-storage alone (46f4:0001, no control tty); the rule wants the FTDI tty.
    thumb = UsbCamera.build(guest.base / "cameras", "0000007", hub="2", files=2)
    cameras.append(thumb)
    before = thumb.card_digest()
    station.start()
    try:
        guest.add_hub(thumb.ids["hub"], thumb.hub)
        thumb.plug_disk(guest)
        unmatched = wait_for(
            f"device.unmatched in {station.daemon.log_path}",
            lambda: station.daemon.events("device.unmatched"),
            timeout=180,
            interval=0.5,
        )
        mounts = guest.check("cat", "/proc/mounts")
    finally:
        station.stop()
    (event,) = unmatched
    assert event["port"].endswith("/usb1/1-2")
    assert event["properties"]["ID_VENDOR_ID"] == "46f4"
    assert event["properties"]["ID_SERIAL_SHORT"] == "0000007"
    assert "/dev/sd" not in mounts  # never mounted
    assert station.summaries() == []
    catalog = station.catalog()
    try:
        assert list(iter_rows(catalog, select(DockVisit))) == []
    finally:
        catalog.close()
    assert thumb.card_digest() == before  # not a byte written


def test_disk_unplugged_mid_copy_ends_unplugged_deletes_nothing_and_a_replug_resumes(
    guest: Guest, station: GuestStation, cameras: list[UsbCamera]
) -> None:
    camera = UsbCamera.build(guest.base / "cameras", "0000004", hub="3", files=4, size_bytes=8 * 2**20)
    cameras.append(camera)
    originals = camera.card_files()
    expected = digests_of(camera.camera.recordings())
    assert len(originals) == 4
    station.start()
    try:
        camera.plug(guest, guest.base)
        wait_for(
            f"a first recording_stored in {station.daemon.log_path}",
            lambda: station.daemon.events("recording_stored"),
            timeout=240,
            interval=0.2,
        )
        camera.unplug_disk(guest)  # device_del: the guest sees the disk's remove uevents mid-session
        (first,) = station.wait_summaries(1)
        assert camera.card_files() == originals  # nothing deleted: the session never finished proving
        camera.unplug(guest)
        camera.bridge = None
        camera.plug(guest, guest.base)  # the whole camera back in
        second = station.wait_summaries(2)[1]
    finally:
        station.stop()
    assert first["state"] == "unplugged", first
    assert first["deleted"] == 0
    assert second["state"] == "done", second
    assert first["files"] + second["files"] == 4  # resumed: what the first stored is not copied again
    assert camera.card_files() == []
    catalog = station.catalog()
    try:
        stored = [
            row[0]
            for row in iter_rows(
                catalog, select(Recording.blake3).join(Camera).where(Camera.device_serial == "0000004")
            )
        ]
        assert sorted(stored) == sorted(expected)  # each recording stored once
        states = [
            row[0]
            for row in iter_rows(
                catalog,
                select(DockVisit.state)
                .join(Camera)
                .where(Camera.device_serial == "0000004")
                .order_by(DockVisit.id),
            )
        ]
        assert states == [SessionState.UNPLUGGED, SessionState.DONE]
    finally:
        catalog.close()


def test_two_cameras_on_two_ports_at_once_one_failing_does_not_stall_the_other(
    guest: Guest, station: GuestStation, cameras: list[UsbCamera]
) -> None:
    healthy = UsbCamera.build(guest.base / "cameras", "0000051", hub="1", files=3, size_bytes=2 * 2**20)
    locked = UsbCamera.build(guest.base / "cameras", "0000052", hub="2", files=2, password="111111")
    cameras.extend([healthy, locked])
    locked_card = locked.card_digest()
    station.start()
    try:
        locked.plug(guest, guest.base)
        healthy.plug(guest, guest.base)
        (summary,) = station.wait_summaries(1)
        (refused,) = wait_for(
            f"camera_open_failed in {station.daemon.log_path}",
            lambda: station.daemon.events("camera_open_failed"),
            timeout=120,
            interval=0.5,
        )
    finally:
        station.stop()
    assert summary["device_id"] == "0000051"
    assert summary["state"] == "done", summary
    assert (summary["files"], summary["deleted"]) == (3, 3)
    assert refused["port"].endswith("/usb1/1-2")
    assert "0000052" not in {e.get("device_id") for e in station.summaries()}
    assert locked.card_digest() == locked_card  # the refused camera's card is untouched


def test_with_udevd_stopped_the_usb_ids_come_from_sysfs(
    guest: Guest, modules: None, cameras: list[UsbCamera]
) -> None:
    """Last in the module: it stops the guest's udevd (and starts it again at the end)."""
    station = GuestStation(guest, guest_daemon(guest, "udevd-stopped", udev_source="kernel"))
    camera = UsbCamera.build(guest.base / "cameras", "0000006", hub="4", files=2)
    cameras.append(camera)
    guest.check("udevadm", "control", "--exit")
    try:
        summary = station.ingest(camera)
    finally:
        guest.check(UDEVD, "--daemon")
    (source,) = station.daemon.events("udev_source")
    assert source["source"] == "kernel"
    assert summary["state"] == "done", summary
    assert (summary["files"], summary["deleted"]) == (2, 2)
    catalog = station.catalog()
    try:
        (serial,) = [row[0] for row in iter_rows(catalog, select(Camera.device_serial))]
        assert serial == "0000006"  # matched on the FTDI's 0403:6001, read from sysfs: no udevd to add them
    finally:
        catalog.close()
