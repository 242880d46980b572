"""Real loop devices and mounts for tests, each cleaned up by its own id (device node, mount point).

Only root can attach loop devices and mount; `require_root_tools` skips with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def require_root_tools(*tools: str) -> None:
    """Skip the calling test, saying why, when it cannot run real loop devices or mounts here."""
    if os.geteuid() != 0:
        pytest.skip("needs root to attach loop devices and mount filesystems")
    if not Path("/dev/loop-control").exists():
        pytest.skip("no /dev/loop-control: the kernel offers no loop devices here")
    for tool in ("losetup", "mount", "umount", *tools):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def make_image(path: Path, size_mib: int, fstype: str = "ext4", label: str = "CAMERA") -> Path:
    """Create a sparse image file holding an empty filesystem of `fstype`."""
    with path.open("wb") as image:
        image.truncate(size_mib * 1024 * 1024)
    if fstype.startswith("ext"):
        cmd = [f"mkfs.{fstype}", "-q", "-F", "-L", label, str(path)]
    elif fstype == "vfat":
        cmd = ["mkfs.vfat", "-n", label[:11], str(path)]
    else:
        cmd = [f"mkfs.{fstype}", str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


@contextlib.contextmanager
def attached(image: Path, *, read_only: bool = False, direct_io: bool = False) -> Iterator[str]:
    """Attach `image` to a free loop device; detach exactly that device afterwards. With `direct_io` the
    loop device reads and writes its file with O_DIRECT, not through the page cache a second time."""
    args = ["losetup", "--find", "--show"]
    if read_only:
        args.append("--read-only")
    if direct_io:
        args.append("--direct-io=on")
    device = subprocess.run([*args, str(image)], check=True, capture_output=True, text=True).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=False, capture_output=True)


def detach_if_backed_by(device: str, image: Path) -> None:
    """Detach `device` only while it still serves `image`: a freed loop number may belong to someone else.
    Its mounts go first (a killed daemon's outlive it), else the detach would wait for them forever."""
    listed = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "BACK-FILE", device],
        check=False,
        capture_output=True,
        text=True,
    )
    backing = listed.stdout.strip().removesuffix(" (deleted)")
    if listed.returncode == 0 and backing and Path(backing) == image.resolve():
        unmount_all(device)
        subprocess.run(["losetup", "--detach", device], check=False, capture_output=True)


def attach_held(image: Path, held: contextlib.ExitStack) -> str:
    """Attach `image` to a free loop device that the test may detach itself (an unplug); `held` detaches
    it at its end only while it still serves `image`."""
    device = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    held.callback(detach_if_backed_by, device, image)
    return device


@contextlib.contextmanager
def mounted(
    source: str | Path, mount_point: Path, options: str = "rw", fstype: str | None = None
) -> Iterator[Path]:
    """Mount `source` on `mount_point`; unmount that mount point afterwards (lazily if busy)."""
    mount_point.mkdir(parents=True, exist_ok=True)
    typed = ["-t", fstype] if fstype else []
    subprocess.run(
        ["mount", *typed, "-o", options, str(source), str(mount_point)], check=True, capture_output=True
    )
    try:
        yield mount_point
    finally:
        done = subprocess.run(["umount", str(mount_point)], check=False, capture_output=True)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False, capture_output=True)


def mount_options(mount_point: Path) -> set[str]:
    """The options `mount_point` is mounted with now (ro or rw among them)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mount_point):
            return set(fields[5].split(","))
    raise AssertionError(f"{mount_point} is not mounted")


def unmount_all(device: str) -> list[Path]:
    """Unmount every mount of block `device` (a killed daemon's mounts outlive it), newest first, and
    remove the daemon's emptied private directories; returns the mount points."""
    number = Path(device).stat().st_rdev
    wanted = f"{os.major(number)}:{os.minor(number)}"
    points = []
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields[2] == wanted:  # octal escapes (\040 for a space) decoded back to the path
            points.append(Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])))
    for point in reversed(points):
        done = subprocess.run(["umount", str(point)], check=False, capture_output=True)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)
        if point.parent.name.startswith("ingestd-volume-"):  # drivers.mount's 0700 private directory
            with contextlib.suppress(OSError):
                point.rmdir()
                point.parent.rmdir()
    return points


@contextlib.contextmanager
def ext4_filesystem(workdir: Path, size_mib: int, name: str = "fs") -> Iterator[Path]:
    """A freshly made, loop-mounted, writable ext4 filesystem under `workdir`."""
    image = make_image(workdir / f"{name}.img", size_mib)
    with attached(image) as device, mounted(device, workdir / name) as mount_point:
        yield mount_point


def image_with_unreadable_file(source: Path, image: Path, name: str, size_mib: int = 16) -> Path:
    """An ext4 image of `source` where reading the tail of `name` fails with a real kernel EIO.

    Root reads through chmod 000 and device-mapper may be missing, so the medium itself is damaged:
    with 1 KiB blocks and no extents, blocks past the 12th hang off one indirect block, which is
    pointed outside the filesystem. The file opens and its head reads; its tail does not.
    """
    with image.open("wb") as out:
        out.truncate(size_mib * 1024 * 1024)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "1024", "-O", "^extent,^64bit", "-d", str(source), str(image)],
        check=True,
        capture_output=True,
    )
    shown = subprocess.run(
        ["debugfs", "-R", f"stat /{name}", str(image)], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"\(IND\):(\d+)", shown)
    assert found is not None, shown
    with image.open("r+b") as out:
        out.seek(int(found.group(1)) * 1024)
        out.write(b"\xf0\xff\xff\xff" * 256)
    return image


def root_filesystem_source() -> str:
    """What is mounted at / here: a device node such as /dev/vda1, or a name like overlay."""
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[fields.index("-") + 2]
    raise AssertionError("nothing is mounted at /")


@contextlib.contextmanager
def ext4_on_failable_device(workdir: Path, size_mib: int, name: str = "fs") -> Iterator[tuple[Path, Any]]:
    """A loop-mounted ext4 filesystem under `workdir` whose sparse image lives on a tmpfs of its own,
    and a callable that fills that tmpfs: from then on every write the filesystem sends to blocks not
    yet allocated in the image (its journal's next commit) fails with EIO, as on a dying disk, while
    the page cache still answers reads. Everything is undone by its own mount point and device."""
    backing = workdir / f"{name}-backing"
    with mounted("tmpfs", backing, f"size={size_mib + 8}m", fstype="tmpfs") as held:
        image = held / f"{name}.img"
        with image.open("wb") as sparse:
            sparse.truncate(size_mib * 1024 * 1024)
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", str(image)],
            check=True,
            capture_output=True,
        )

        def fail_writes() -> None:
            free = shutil.disk_usage(held).free
            subprocess.run(["fallocate", "-l", str(free), str(held / "filler")], check=True)

        with attached(image) as device, mounted(device, workdir / name) as mount_point:
            yield mount_point, fail_writes
