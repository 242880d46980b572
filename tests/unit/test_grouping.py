"""Uevent grouping: one Docked per port once its children settle, one Undocked on the first remove."""

from __future__ import annotations

from ingestd.docking.events import Docked, Undocked
from ingestd.docking.grouping import Uevent, UeventGrouper

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
