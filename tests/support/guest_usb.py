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

# A camera as one composite USB device: the guest's configfs gadget (acm + mass_storage, 1d6b:0104,
# serial 0000011, tests/vm/gadget.py) bound to dummy_hcd, whose host side is the guest's usb3 (Debian 6.1).
DUMMY_ROOT_HUB = UsbAncestor("/devices/platform/dummy_hcd.0/usb3", "09")
GADGET_USB = UsbAncestor("/devices/platform/dummy_hcd.0/usb3/3-1", "ef")  # misc class: interface association
GADGET_TTY_DEVPATH = f"{GADGET_USB.devpath}/3-1:1.0/tty/ttyACM0"  # acm: interfaces 0 (control) and 1 (data)
GADGET_DISK_DEVPATH = (
    f"{GADGET_USB.devpath}/3-1:1.2/host6/target6:0:0/6:0:0:0/block/sda"  # no partition table
)
# After SetMSDC's re-enumeration (acm dropped): the same port and disk name, the storage now interface 0.
GADGET_STORAGE_ONLY_DISK_DEVPATH = f"{GADGET_USB.devpath}/3-1:1.0/host6/target6:0:0/6:0:0:0/block/sda"
GADGET_PROPS = {"ID_VENDOR_ID": "1d6b", "ID_MODEL_ID": "0104", "ID_SERIAL_SHORT": "0000011"}
