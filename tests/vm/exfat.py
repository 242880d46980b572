"""exFAT card images, made and read in the guest: its kernel mounts exFAT, the host's does not, and mtools
has no exFAT.

Run inside the guest (`python -m tests.vm.exfat OP IMAGE [SOURCE]`, stdlib only):
- `build IMAGE SOURCE` formats IMAGE (its size already set) and copies SOURCE's tree into it. exFAT stores
  names as UTF-16, so a name's bytes are only ever what a mount's iocharset makes of them: a name that is
  UTF-8 goes in through a mount with `iocharset=utf8`, one that is not (GBK bytes, as a Chinese camera's
  firmware holds them) through one with `iocharset=cp936`, which converts it from GBK as that firmware
  does when it writes the card.
- `list IMAGE` prints the card's file paths as a mount with `iocharset=utf8` shows them, one per line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

MODULES = ("loop", "exfat", "nls_cp936")


@contextlib.contextmanager
def mounted(image: Path, options: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="exfat-") as mount_point:
        # `-o loop` attaches with autoclear: the loop device goes with the unmount.
        subprocess.run(["mount", "-t", "exfat", "-o", f"loop,{options}", str(image), mount_point], check=True)
        try:
            yield Path(mount_point)
        finally:
            subprocess.run(["umount", mount_point], check=True)


def _is_utf8(name: str) -> bool:
    """Whether a name's bytes are UTF-8 (str names from the OS carry other bytes as surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def build(image: Path, source: Path) -> None:
    subprocess.run(["modprobe", "-a", *MODULES], check=True)
    subprocess.run(["mkfs.exfat", "-L", "CAMERA", str(image)], check=True, capture_output=True)
    for charset, utf8 in (("utf8", True), ("cp936", False)):
        with mounted(image, f"iocharset={charset}") as target:
            for directory, _folders, files in os.walk(source):
                relative = Path(directory).relative_to(source)
                for name in files:
                    if _is_utf8(name) != utf8:
                        continue
                    (target / relative).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(Path(directory, name), target / relative / name)


def listing(image: Path) -> list[str]:
    with mounted(image, "ro,iocharset=utf8") as root:
        return sorted(
            str(Path(directory, name).relative_to(root))
            for directory, _folders, files in os.walk(root)
            for name in files
        )


def main(argv: list[str]) -> int:
    if argv[:1] == ["build"] and len(argv) == 3:
        build(Path(argv[1]), Path(argv[2]))
    elif argv[:1] == ["list"] and len(argv) == 2:
        sys.stdout.buffer.write(b"".join(os.fsencode(path) + b"\n" for path in listing(Path(argv[1]))))
    else:
        print("usage: python -m tests.vm.exfat build IMAGE SOURCE | list IMAGE", file=sys.stderr)
        return 64
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
