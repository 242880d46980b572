"""Docking a camera that is ONE composite USB device, as real ones are: the guest kernel's configfs gadget
(mass_storage + acm) on dummy_hcd, the simulator in the guest behind the gadget's `/dev/ttyGS0`.

One guest for the module; each test makes its own gadget (dummy_hcd has one controller, so one camera at
a time), starts the daemon afresh with `detection.usb_grouping = "device"`, and takes the gadget apart
after.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from store.models import (
    Camera,
    ClockReading,
    CustodyEvent,
    CustodyKind,
    Dock,
    DockVisit,
    Recording,
    SessionState,
)
from tests.system.harness import iter_rows
from tests.system.test_daemon import digests_of
from tests.vm import exfat, gadget
from tests.vm.machine import Guest
from tests.vm.station import GADGET_RULE, REENUMERATE_S, GadgetCamera, GuestStation, guest_daemon

pytestmark = pytest.mark.vm

# Recorded in the guest: the gadget enumerates on dummy_hcd's root port 1 (its controller is usb3 after
# qemu-xhci's usb1 and usb2), tty on interface 0 (acm takes 0 and 1), disk on interface 2.
GADGET_PORT = "/devices/platform/dummy_hcd.0/usb3/3-1"


@pytest.fixture(scope="module")
def modules(guest: Guest) -> None:
    guest.check("modprobe", "-a", *gadget.MODULES, *exfat.MODULES)


@pytest.fixture
def station(guest: Guest, modules: None, request: pytest.FixtureRequest) -> Iterator[GuestStation]:
    """A station of its own for each test, grouping per USB device (a camera is one composite device);
    stopped at the end if a test failed between starting it and stopping it."""
    daemon = guest_daemon(
        guest,
        request.node.name[:40],
        grouping="device",
        rule=GADGET_RULE,
        detection=f"reenumerate_seconds = {REENUMERATE_S}\nstorage_wait_seconds = {REENUMERATE_S}",
    )
    station = GuestStation(guest, daemon)
    yield station
    if station.launched:
        guest.signal("ingestd")


@pytest.fixture
def cameras(guest: Guest) -> Iterator[list[GadgetCamera]]:
    made: list[GadgetCamera] = []
    yield made
    for camera in made:
        camera.close()


def ingest(
    station: GuestStation, camera: GadgetCamera, cameras: list[GadgetCamera], **options: Any
) -> tuple[dict[str, Any], list[str]]:
    """Start the daemon, ready the camera meanwhile, plug it in and wait for its one session: the
    session's summary and the guest's USB device nodes at its end."""
    station.launch()  # its start overlaps the camera's
    camera.start(**options)
    cameras.append(camera)
    station.wait_ready()
    try:
        camera.bind()
        (summary,) = station.wait_summaries(1)
        nodes = station.guest.check("sh", "-c", "ls /dev/ttyACM* /dev/ttyUSB* /dev/sd* 2>/dev/null; true")
    finally:
        station.stop()
    return summary, nodes.split()


def test_one_composite_device_docks_as_one_camera_identified_over_acm_synced_ingested_and_wiped(
    guest: Guest, station: GuestStation, cameras: list[GadgetCamera]
) -> None:
    camera = GadgetCamera.build(guest, "0000011", files=3)
    camera.make_vfat()
    expected = digests_of(camera.recordings())
    assert len(expected) == 3
    summary, nodes = ingest(station, camera, cameras, drift_s=4.0, battery=71)
    low, high = guest.clock_behind_host()
    assert "/dev/ttyACM0" in nodes  # the gadget's acm function: the only control tty there is
    assert not [node for node in nodes if node.startswith("/dev/ttyUSB")]
    assert summary["state"] == "done", summary
    assert (summary["files"], summary["deleted"], summary["errors"]) == (3, 3, 0)
    assert summary["port"] == GADGET_PORT  # the device's own DEVPATH: one dock for its tty and its disk
    assert camera.card_files() == []  # wiped from the card, after proof

    catalog = station.catalog()
    try:
        (dock,) = [row[0] for row in iter_rows(catalog, select(Dock))]
        (session,) = [row[0] for row in iter_rows(catalog, select(DockVisit))]
        assert dock.port == GADGET_PORT
        assert session.dock_id == dock.id
        assert session.state is SessionState.DONE
        assert session.battery_percent == 71
        # Measured over ttyACM0 against the guest's clock: the camera's 4 s plus the guest's own lag.
        assert session.clock_offset_s is not None
        assert 4.0 + low - 0.1 <= session.clock_offset_s <= 4.0 + high + 0.1
        (reading,) = [row[0] for row in iter_rows(catalog, select(ClockReading))]
        assert reading.state == "synced"
        assert reading.residual_s is not None
        assert abs(reading.residual_s) < 0.05
        stored = {row[0] for row in iter_rows(catalog, select(Recording.blake3))}
        assert stored == expected
        kinds = [row[0] for row in iter_rows(catalog, select(CustodyEvent.kind))]
        assert kinds == [CustodyKind.CHECK_IN]
        (device_serial,) = [row[0] for row in iter_rows(catalog, select(Camera.device_serial))]
        assert device_serial == "0000011"  # from the gadget's USB serial and the camera's GetIDCode alike
    finally:
        catalog.close()


def test_a_camera_re_enumerating_with_storage_only_after_setmsdc_stays_one_session(
    guest: Guest, station: GuestStation, cameras: list[GadgetCamera]
) -> None:
    # A GA/T 947 camera as the issue describes it: its control interface alone until SetMSDC, then off
    # the bus and back on the same port with its storage only (the simulator's --on-msdc runs it).
    camera = GadgetCamera.build(guest, "0000012", files=2)
    camera.make_vfat()
    expected = digests_of(camera.recordings())
    summary, nodes = ingest(station, camera, cameras, control_only=True)
    assert "/dev/ttyACM0" not in nodes  # the control interface really went
    assert "/dev/sda" in nodes
    # udev gives no order between devices: seen both ways here. Its tty's remove first: the port is left
    # and the camera comes back on it. The new disk's add first: storage on a port still docked (the
    # tty's remove, later, leaves it docked). Either way one session, below.
    back = station.daemon.events("camera_reenumerated")
    if back:
        (going,) = station.daemon.events("camera_reenumerating")
        assert going["port"] == back[0]["port"] == GADGET_PORT
        assert back[0]["usb_serial"] == "0000012"
    else:
        (arrived,) = station.daemon.events("storage_arrived")
        assert (arrived["port"], arrived["block"]) == (GADGET_PORT, "/dev/sda")
    assert summary["state"] == "done", summary
    assert (summary["files"], summary["deleted"], summary["errors"]) == (2, 2, 0)
    assert camera.card_files() == []

    catalog = station.catalog()
    try:
        (session,) = [row[0] for row in iter_rows(catalog, select(DockVisit))]  # one session, not two
        assert session.state is SessionState.DONE
        kinds = [row[0] for row in iter_rows(catalog, select(CustodyEvent.kind))]
        assert kinds == [CustodyKind.CHECK_IN]  # no check-out between, no second check-in
        stored = {row[0] for row in iter_rows(catalog, select(Recording.blake3))}
        assert stored == expected
    finally:
        catalog.close()


def test_an_exfat_card_with_utf8_and_gbk_names_is_ingested_under_the_names_the_camera_shows(
    guest: Guest, station: GuestStation, cameras: list[GadgetCamera]
) -> None:
    camera = GadgetCamera.build(guest, "0000013", files=3)
    first, second, third = camera.recordings()
    utf8_name = f"执法记录仪_{first.name}"
    first.rename(first.with_name(utf8_name))
    # GBK bytes, as the camera's firmware holds the name: exFAT stores UTF-16, so on the card this is the
    # Chinese it means (tests/vm/exfat.py writes it through iocharset=cp936, converting as firmware does).
    gbk_name = f"录像_{second.name}"
    second.rename(second.with_name(os.fsdecode(gbk_name.encode("gbk"))))
    expected = digests_of(camera.recordings())
    camera.make_exfat()  # before the daemon: the guest's loop mounts would show it a (non-camera) disk
    names = {f"DCIM/100MEDIA/{name}" for name in (utf8_name, gbk_name, third.name)}
    assert names <= set(camera.exfat_files())
    summary, _nodes = ingest(station, camera, cameras)
    assert summary["state"] == "done", summary
    assert (summary["files"], summary["deleted"], summary["errors"]) == (3, 3, 0)
    (mounted, *_) = station.daemon.events("volume.mounted")
    assert mounted["fstype"] == "exfat"

    catalog = station.catalog()
    try:
        rows = list(iter_rows(catalog, select(Recording.original_path, Recording.blake3)))
        # Each name exactly as the camera shows it, in UTF-8: never GBK bytes, escapes or mojibake.
        assert {row[0] for row in rows} == names
        assert {row[1] for row in rows} == expected
    finally:
        catalog.close()
    cameras.remove(camera)
    camera.close()  # off the bus, so the guest may mount the image to look
    assert [path for path in camera.exfat_files() if path.upper().endswith(".MP4")] == []  # wiped
