"""A camera as ONE composite USB device, built by the guest's own kernel: a configfs gadget on dummy_hcd.

Run inside the guest (`python -m tests.vm.gadget OP NAME ...`, stdlib only). The gadget has a
`mass_storage` function backed by a card image on the share and an `acm` function; bound to dummy_hcd's
UDC, the guest's USB host side enumerates it as one device with a disk (`/dev/sd*`) and `/dev/ttyACM*`,
while the gadget's end of that serial line is `/dev/ttyGS0`, where the simulator answers. Unbinding it,
dropping `acm` and binding it again is what a camera does after SetMSDC: it re-enumerates on the same
port with its storage only.

Operations: `create NAME --serial S --image PATH [--control-only]` (not bound; with `--control-only`
the storage function is made but not offered, a camera whose storage appears only after SetMSDC),
`bind NAME`, `storage-only NAME` (unbind, drop acm, offer storage, bind again), `remove NAME` (unbind and
take the gadget apart).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

CONFIGFS = Path("/sys/kernel/config")
GADGETS = CONFIGFS / "usb_gadget"
UDC = "dummy_udc.0"  # dummy_hcd's one peripheral-side controller
# Gadget side: dummy_hcd and the configfs functions. Host side: the drivers a station needs for it.
MODULES = ("dummy_hcd", "libcomposite", "usb_f_acm", "usb_f_mass_storage", "cdc_acm", "usb-storage", "vfat")
# The Linux Foundation's "Multifunction Composite Gadget": the IDs the station's camera rule matches.
VENDOR_ID = "1d6b"
PRODUCT_ID = "0104"
CONFIG = "c.1"
ACM = "acm.usb0"
STORAGE = "mass_storage.usb0"
ENGLISH = "0x409"


def _write(path: Path, value: str) -> None:
    path.write_text(value + "\n", encoding="ascii")


def prepare() -> None:
    """Load the modules (no udevd may be there to do it) and mount configfs if it is not."""
    subprocess.run(["modprobe", "-a", *MODULES], check=True)
    if not GADGETS.is_dir():
        subprocess.run(["mount", "-t", "configfs", "configfs", str(CONFIGFS)], check=True)


def create(name: str, serial: str, image: Path, *, control_only: bool = False) -> None:
    prepare()
    gadget = GADGETS / name
    gadget.mkdir()
    _write(gadget / "idVendor", f"0x{VENDOR_ID}")
    _write(gadget / "idProduct", f"0x{PRODUCT_ID}")
    _write(gadget / "bcdUSB", "0x0200")
    # Miscellaneous device class with interface association descriptors: what ACM in a composite needs.
    _write(gadget / "bDeviceClass", "0xef")
    _write(gadget / "bDeviceSubClass", "0x02")
    _write(gadget / "bDeviceProtocol", "0x01")
    strings = gadget / "strings" / ENGLISH
    strings.mkdir()
    _write(strings / "serialnumber", serial)
    _write(strings / "manufacturer", "ingestd vm tier")
    _write(strings / "product", "simulated body camera")
    config = gadget / "configs" / CONFIG
    config.mkdir()
    _write(config / "MaxPower", "250")
    acm = gadget / "functions" / ACM
    acm.mkdir()
    storage = gadget / "functions" / STORAGE
    storage.mkdir()
    lun = storage / "lun.0"
    _write(lun / "removable", "1")
    _write(lun / "ro", "0")  # the station deletes the originals after proof, through its own remount
    _write(lun / "file", str(image))
    (config / ACM).symlink_to(acm)
    if not control_only:
        (config / STORAGE).symlink_to(storage)


def bind(name: str) -> None:
    _write(GADGETS / name / "UDC", UDC)


def unbind(name: str) -> None:
    udc = GADGETS / name / "UDC"
    if udc.read_text(encoding="ascii").strip():
        _write(udc, "")


def storage_only(name: str) -> None:
    """SetMSDC's re-enumeration: off the bus, the control interface gone, back with storage only."""
    unbind(name)
    config = GADGETS / name / "configs" / CONFIG
    (config / ACM).unlink()
    if not (config / STORAGE).is_symlink():
        (config / STORAGE).symlink_to(GADGETS / name / "functions" / STORAGE)
    bind(name)


def remove(name: str) -> None:
    gadget = GADGETS / name
    if not gadget.is_dir():
        return
    unbind(name)
    config = gadget / "configs" / CONFIG
    for function in (ACM, STORAGE):
        (config / function).unlink(missing_ok=True)
    config.rmdir()
    for function in (ACM, STORAGE):
        (gadget / "functions" / function).rmdir()
    (gadget / "strings" / ENGLISH).rmdir()
    gadget.rmdir()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.vm.gadget", description=__doc__)
    parser.add_argument("op", choices=("create", "bind", "storage-only", "remove"))
    parser.add_argument("name")
    parser.add_argument("--serial")
    parser.add_argument("--image", type=Path)
    parser.add_argument("--control-only", action="store_true")
    args = parser.parse_args(argv)
    if args.op == "create":
        if args.serial is None or args.image is None:
            parser.error("create needs --serial and --image")
        create(args.name, args.serial, args.image, control_only=args.control_only)
    elif args.op == "bind":
        bind(args.name)
    elif args.op == "storage-only":
        storage_only(args.name)
    else:
        remove(args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
