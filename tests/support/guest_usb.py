"""USB facts recorded in the vm tier's guest (QEMU 7.2 qemu-xhci, Debian 6.1): a usb-hub on root port 1,
QEMU's usb-storage (46f4:0001) on hub port 1 and usb-serial (FTDI 0403:6001) on hub port 2, both
serial=0000001. Unit and integration tests of grouping and re-enumeration use these, not made-up paths."""

from __future__ import annotations

from ingestd.docking.grouping import UsbAncestor

XHCI = "/devices/pci0000:00/0000:00:0a.0"
GUEST_ROOT_HUB = UsbAncestor(f"{XHCI}/usb1", "09")
GUEST_HUB = UsbAncestor(f"{XHCI}/usb1/1-1", "09")
GUEST_DISK_USB = UsbAncestor(f"{XHCI}/usb1/1-1/1-1.1", "00")  # .../1-1.1:1.0/host6/.../block/sda
GUEST_TTY_USB = UsbAncestor(f"{XHCI}/usb1/1-1/1-1.2", "00")  # .../1-1.2:1.0/ttyUSB0/tty/ttyUSB0
GUEST_DISK_PROPS = {"ID_VENDOR_ID": "46f4", "ID_MODEL_ID": "0001", "ID_SERIAL_SHORT": "0000001"}
GUEST_TTY_PROPS = {"ID_VENDOR_ID": "0403", "ID_MODEL_ID": "6001", "ID_SERIAL_SHORT": "0000001"}
