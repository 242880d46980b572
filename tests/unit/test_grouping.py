"""Uevent grouping: one Docked per port once its children settle, one Undocked on the first remove."""

from __future__ import annotations

from ingestd.docking.events import Docked, Undocked
from ingestd.docking.grouping import Uevent, UeventGrouper, UsbAncestor, dock_port

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


# Recorded in the vm tier's guest (QEMU 7.2 qemu-xhci, Debian 6.1): a usb-hub on root port 1, QEMU's
# usb-storage (46f4:0001) on hub port 1 and usb-serial (FTDI 0403:6001) on hub port 2, both serial=0000001.
XHCI = "/devices/pci0000:00/0000:00:0a.0"
GUEST_ROOT_HUB = UsbAncestor(f"{XHCI}/usb1", "09")
GUEST_HUB = UsbAncestor(f"{XHCI}/usb1/1-1", "09")
GUEST_DISK_USB = UsbAncestor(f"{XHCI}/usb1/1-1/1-1.1", "00")  # .../1-1.1:1.0/host6/.../block/sda
GUEST_TTY_USB = UsbAncestor(f"{XHCI}/usb1/1-1/1-1.2", "00")  # .../1-1.2:1.0/ttyUSB0/tty/ttyUSB0
GUEST_DISK_PROPS = {"ID_VENDOR_ID": "46f4", "ID_MODEL_ID": "0001", "ID_SERIAL_SHORT": "0000001"}
GUEST_TTY_PROPS = {"ID_VENDOR_ID": "0403", "ID_MODEL_ID": "6001", "ID_SERIAL_SHORT": "0000001"}


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
