"""Uevent grouping: one Docked per port once its children settle, one Undocked on the first remove."""

from __future__ import annotations

from drivers.base import DeviceInfo
from drivers.mass_storage import MassStorageDriver
from drivers.serial_camera import SerialDriver
from ingestd.docking.events import Docked, StorageArrived, Undocked
from ingestd.docking.grouping import Uevent, UeventGrouper, UsbAncestor, dock_port
from tests.support.guest_usb import (
    DUMMY_ROOT_HUB,
    GADGET_DISK_DEVPATH,
    GADGET_PROPS,
    GADGET_STORAGE_ONLY_DISK_DEVPATH,
    GADGET_TTY_DEVPATH,
    GADGET_USB,
    GUEST_DISK_PROPS,
    GUEST_DISK_USB,
    GUEST_HUB,
    GUEST_ROOT_HUB,
    GUEST_TTY_PROPS,
    GUEST_TTY_USB,
    XHCI,
)

PORT = "/devices/pci0000:00/0000:00:14.0/usb1/1-2"
USB = {"ID_VENDOR_ID": "1d6b", "ID_MODEL_ID": "0104", "ID_SERIAL_SHORT": "ZFY0001"}


def add(subsystem: str, devname: str, *, partition: bool = False, port: str = PORT) -> Uevent:
    return Uevent("add", port, subsystem, devname, {**USB, "SUBSYSTEM": subsystem}, partition)


def test_children_are_grouped_and_emitted_once_after_settling() -> None:
    grouper = UeventGrouper(settle_s=1.0)
    assert grouper.feed(add("block", "/dev/sdb"), now=0.0) == []
    assert grouper.feed(add("tty", "/dev/ttyACM0"), now=0.4) == []
    assert grouper.feed(add("block", "/dev/sdb1", partition=True), now=0.8) == []
    assert grouper.tick(now=1.7) == []  # 0.9 s since the last child: not settled yet
    assert grouper.next_deadline() == 1.8
    (event,) = grouper.tick(now=1.8)
    assert isinstance(event, Docked)
    assert event.port == PORT
    assert event.device.tty == "/dev/ttyACM0"
    assert event.device.block == "/dev/sdb1"  # the partition, not the whole disk
    assert event.device.properties["ID_SERIAL_SHORT"] == "ZFY0001"
    assert grouper.tick(now=5.0) == []  # never twice


def test_partitionless_disk_is_the_volume() -> None:
    grouper = UeventGrouper(settle_s=0.5)
    grouper.feed(add("block", "/dev/loop3"), now=0.0)
    (event,) = grouper.tick(now=0.5)
    assert isinstance(event, Docked)
    assert event.device.block == "/dev/loop3"
    assert event.device.tty is None


def test_remove_undocks_once_and_only_after_a_dock() -> None:
    grouper = UeventGrouper(settle_s=0.5)
    grouper.feed(add("tty", "/dev/ttyACM0"), now=0.0)
    remove = Uevent("remove", PORT, "tty", "/dev/ttyACM0", {})
    assert grouper.feed(remove, now=0.1) == []  # unplugged before it settled: nothing was started
    grouper.feed(add("tty", "/dev/ttyACM0"), now=1.0)
    grouper.tick(now=2.0)
    assert grouper.feed(remove, now=3.0) == [Undocked(PORT)]
    assert grouper.feed(Uevent("remove", PORT, "block", "/dev/sdb", {}), now=3.1) == []


def test_two_ports_are_independent() -> None:
    grouper = UeventGrouper(settle_s=1.0)
    other = "/devices/pci0000:00/0000:00:14.0/usb1/1-3"
    grouper.feed(add("tty", "/dev/ttyACM0"), now=0.0)
    grouper.feed(add("tty", "/dev/ttyACM1", port=other), now=0.6)
    docked = grouper.tick(now=1.0)
    assert [e.port for e in docked] == [PORT]
    assert [e.port for e in grouper.tick(now=1.6)] == [other]


# The guest's recorded USB tree (tests.support.guest_usb).


def test_by_device_each_usb_device_is_its_own_dock() -> None:
    assert dock_port([GUEST_DISK_USB, GUEST_HUB, GUEST_ROOT_HUB], "device") == GUEST_DISK_USB.devpath
    assert dock_port([GUEST_TTY_USB, GUEST_HUB, GUEST_ROOT_HUB], "device") == GUEST_TTY_USB.devpath


def test_by_hub_the_devices_behind_one_hub_are_one_dock() -> None:
    assert dock_port([GUEST_DISK_USB, GUEST_HUB, GUEST_ROOT_HUB], "hub") == GUEST_HUB.devpath
    assert dock_port([GUEST_TTY_USB, GUEST_HUB, GUEST_ROOT_HUB], "hub") == GUEST_HUB.devpath


def test_by_hub_a_device_on_a_root_port_is_still_its_own_dock() -> None:
    # A composite camera straight on the controller: its parent is the root hub, never a dock.
    camera = UsbAncestor(f"{XHCI}/usb1/1-2", "00")
    assert dock_port([camera, GUEST_ROOT_HUB], "hub") == camera.devpath
    # Behind a device that is not a hub (class 00), grouping stays per device.
    assert dock_port([GUEST_TTY_USB, UsbAncestor(f"{XHCI}/usb1/1-1", "00"), GUEST_ROOT_HUB], "hub") == (
        GUEST_TTY_USB.devpath
    )


def test_the_ttys_usb_ids_win_over_the_disks_when_they_differ() -> None:
    # The kernel gives no order between two devices on a hub: either way the tty decides.
    for first, second in (("block", "tty"), ("tty", "block")):
        grouper = UeventGrouper(settle_s=0.5)
        props = {"block": GUEST_DISK_PROPS, "tty": GUEST_TTY_PROPS}
        devnames = {"block": "/dev/sda", "tty": "/dev/ttyUSB0"}
        for at, subsystem in enumerate((first, second)):
            grouper.feed(
                Uevent("add", GUEST_HUB.devpath, subsystem, devnames[subsystem], props[subsystem]), at
            )
        (event,) = grouper.tick(now=5.0)
        assert isinstance(event, Docked)
        assert event.device.properties["ID_VENDOR_ID"] == "0403"
        assert event.device.properties["ID_MODEL_ID"] == "6001"
        assert (event.device.tty, event.device.block) == ("/dev/ttyUSB0", "/dev/sda")


# Late storage, early docks and re-enumeration, on the guest's recorded paths (QEMU hub, grouped by hub).
GUEST_PORT = GUEST_HUB.devpath


def serial_ready(device: DeviceInfo) -> bool:
    """The serial driver's rule: its control tty is enough (drivers.serial_camera.SerialDriver.ready)."""
    return SerialDriver().ready(device)


def storage_ready(device: DeviceInfo) -> bool:
    return MassStorageDriver().ready(device)


def guest(action: str, subsystem: str, devname: str, **flags: bool) -> Uevent:
    props = GUEST_TTY_PROPS if subsystem == "tty" else GUEST_DISK_PROPS
    return Uevent(action, GUEST_PORT, subsystem, devname, props, **flags)


def test_a_serial_camera_docks_on_its_tty_at_once_and_its_late_partition_follows_as_storage() -> None:
    grouper = UeventGrouper(settle_s=1.0, ready=serial_ready)
    (docked,) = grouper.feed(guest("add", "tty", "/dev/ttyUSB0"), now=0.0)
    assert isinstance(docked, Docked)
    assert (docked.device.tty, docked.device.block) == ("/dev/ttyUSB0", None)
    assert grouper.next_deadline() is None  # nothing left to settle
    # The disk has a partition table: not the volume, and its partition's uevent follows.
    assert grouper.feed(guest("add", "block", "/dev/sda", partitioned=True), now=1.4) == []
    assert grouper.feed(guest("add", "block", "/dev/sda1", partition=True), now=1.5) == [
        StorageArrived(GUEST_PORT, "/dev/sda1", GUEST_DISK_PROPS)
    ]
    assert grouper.feed(guest("add", "block", "/dev/sda2", partition=True), now=1.6) == []  # once
    assert grouper.tick(now=10.0) == []


def test_a_late_partitionless_disk_of_a_settled_dock_is_its_storage() -> None:
    grouper = UeventGrouper(settle_s=1.0)  # no predicate: the settle window, as before
    grouper.feed(guest("add", "tty", "/dev/ttyUSB0"), now=0.0)
    (docked,) = grouper.tick(now=1.0)
    assert isinstance(docked, Docked)
    assert docked.device.block is None
    assert grouper.feed(guest("add", "block", "/dev/sda"), now=2.5) == [
        StorageArrived(GUEST_PORT, "/dev/sda", GUEST_DISK_PROPS)
    ]


def test_a_storage_rule_docks_on_the_partition_not_on_the_disk_before_it() -> None:
    grouper = UeventGrouper(settle_s=1.0, ready=storage_ready)
    assert grouper.feed(guest("add", "block", "/dev/sda", partitioned=True), now=0.0) == []
    (docked,) = grouper.feed(guest("add", "block", "/dev/sda1", partition=True), now=0.01)
    assert isinstance(docked, Docked)
    assert docked.device.block == "/dev/sda1"
    # A partitionless disk (a loop image) is the volume, at its own uevent.
    loop = UeventGrouper(settle_s=1.0, ready=storage_ready)
    (docked,) = loop.feed(Uevent("add", "/devices/virtual/block/loop3", "block", "/dev/loop3", {}), now=0.0)
    assert isinstance(docked, Docked)
    assert docked.device.block == "/dev/loop3"


def test_a_device_no_rule_makes_ready_waits_out_the_settle_window() -> None:
    grouper = UeventGrouper(settle_s=1.0, ready=lambda device: False)
    assert grouper.feed(guest("add", "tty", "/dev/ttyUSB0"), now=0.0) == []
    assert [type(e) for e in grouper.tick(now=1.0)] == [Docked]


def test_coldplugged_children_settle_together_even_when_ready() -> None:
    grouper = UeventGrouper(settle_s=1.0, ready=serial_ready)
    assert grouper.feed(guest("add", "tty", "/dev/ttyUSB0"), now=0.0, early=False) == []
    grouper.feed(guest("add", "block", "/dev/sda"), now=0.0, early=False)
    (docked,) = grouper.tick(now=1.0)
    assert isinstance(docked, Docked)
    assert (docked.device.tty, docked.device.block) == ("/dev/ttyUSB0", "/dev/sda")


def test_a_camera_re_enumerating_after_setmsdc_is_an_undock_then_a_storage_only_dock_on_the_same_port() -> (
    None
):
    # SetMSDC: the camera's USB device goes (its tty's remove) and comes back with storage only, on the
    # same port. The grouper reports exactly that; the manager keeps it one session (its own tests).
    grouper = UeventGrouper(settle_s=1.0, ready=serial_ready)
    grouper.feed(guest("add", "tty", "/dev/ttyUSB0"), now=0.0)
    assert grouper.feed(guest("remove", "tty", "/dev/ttyUSB0"), now=3.0) == [Undocked(GUEST_PORT)]
    assert grouper.feed(guest("add", "block", "/dev/sdb"), now=4.2) == []  # storage only: not serial-ready
    (back,) = grouper.tick(now=5.2)
    assert isinstance(back, Docked)
    assert back.port == GUEST_PORT
    assert (back.device.tty, back.device.block) == (None, "/dev/sdb")
    assert back.device.properties["ID_SERIAL_SHORT"] == GUEST_TTY_PROPS["ID_SERIAL_SHORT"]


def test_a_tty_leaving_while_the_disk_stays_is_no_undock_and_the_disks_remove_is() -> None:
    # A camera that drops only its control interface in mass-storage mode (QEMU: device_del of the
    # usb-serial) keeps its storage on the port; the unplug is when the disk goes.
    grouper = UeventGrouper(settle_s=1.0)
    grouper.feed(guest("add", "tty", "/dev/ttyUSB0"), now=0.0)
    grouper.feed(guest("add", "block", "/dev/sda"), now=0.1)
    grouper.tick(now=1.1)
    assert grouper.feed(guest("remove", "tty", "/dev/ttyUSB0"), now=2.0) == []
    assert grouper.feed(guest("remove", "block", "/dev/sda"), now=3.0) == [Undocked(GUEST_PORT)]


def test_the_composite_gadgets_tty_and_disk_are_one_dock_on_its_own_devpath() -> None:
    # Recorded: tty and disk are interfaces of one device (class ef), on a root port of dummy_hcd.
    assert GADGET_TTY_DEVPATH.startswith(GADGET_USB.devpath + "/")
    assert GADGET_DISK_DEVPATH.startswith(GADGET_USB.devpath + "/")
    for grouping in ("device", "hub"):  # a root port's device is its own dock either way
        assert dock_port([GADGET_USB, DUMMY_ROOT_HUB], grouping) == GADGET_USB.devpath
    grouper = UeventGrouper(settle_s=1.0, ready=serial_ready)
    (docked,) = grouper.feed(Uevent("add", GADGET_USB.devpath, "tty", "/dev/ttyACM0", GADGET_PROPS), now=0.0)
    assert isinstance(docked, Docked)
    assert docked.device.tty == "/dev/ttyACM0"
    # Its disk (no partition table) follows on the same port, as the camera's volume.
    assert grouper.feed(Uevent("add", GADGET_USB.devpath, "block", "/dev/sda", GADGET_PROPS), now=1.7) == [
        StorageArrived(GADGET_USB.devpath, "/dev/sda", GADGET_PROPS)
    ]


def test_the_gadgets_storage_only_re_enumeration_comes_back_on_the_same_port() -> None:
    # Recorded: after unbind, acm dropped, bind, the disk moved from interface 2 to 0 of the same device,
    # so its dock port (the device's DEVPATH) is unchanged while its DEVPATH is not.
    assert GADGET_STORAGE_ONLY_DISK_DEVPATH != GADGET_DISK_DEVPATH
    assert GADGET_STORAGE_ONLY_DISK_DEVPATH.startswith(GADGET_USB.devpath + "/")
    grouper = UeventGrouper(settle_s=1.0, ready=serial_ready)
    port = GADGET_USB.devpath
    grouper.feed(Uevent("add", port, "tty", "/dev/ttyACM0", GADGET_PROPS), now=0.0)
    assert grouper.feed(Uevent("remove", port, "tty", "/dev/ttyACM0", {}), now=5.0) == [Undocked(port)]
    assert grouper.feed(Uevent("add", port, "block", "/dev/sda", GADGET_PROPS), now=6.7) == []
    (back,) = grouper.tick(now=7.7)
    assert isinstance(back, Docked)
    assert (back.port, back.device.tty, back.device.block) == (port, None, "/dev/sda")
    assert back.device.properties["ID_SERIAL_SHORT"] == "0000011"  # the same camera: the manager's test
