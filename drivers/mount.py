"""Mount a camera volume read-only, nosuid, nodev, noexec, in a private directory, and always unmount it.

Guarantees: the volume's type is detected first (blkid's low-level probe) and the volume is mounted
only when that type is one the camera's rule allows, and only as that type (`mount -t`), so the kernel
never parses it with another filesystem's code. Allowed by default: vfat and exfat, what cameras use;
ext4 only where a rule lists it (a hostile image is parsed by the kernel, and ext4 is a large parser).
A volume of another type, of no type blkid recognises, or with signatures of more than one type is
refused before any mount point is made (`FilesystemRefused`, exit 28). The mount point sits inside a
fresh 0700 directory so no other local user can traverse it; on exit the volume is unmounted (lazily if
it is still busy) and the private directory removed. Every failure is a `MountError` that names the
device and carries blkid's or mount(8)'s own message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import structlog

from drivers.base import MountError

DEFAULT_FSTYPES: tuple[str, ...] = ("vfat", "exfat")
MOUNT_OPTIONS = "ro,nosuid,nodev,noexec"
# Names on FAT and exFAT are UTF-16 on disk; ask for UTF-8 so non-ASCII (Chinese) names survive.
# ext4: `noload` skips journal replay, so not even the journal of the evidence medium is written.
_FS_OPTIONS: dict[str, str] = {"vfat": "utf8,shortname=mixed", "exfat": "iocharset=utf8", "ext4": "noload"}
SUPPORTED_FSTYPES: tuple[str, ...] = tuple(_FS_OPTIONS)  # what a rule may allow
_TIMEOUT_S = 60.0
_BLKID_NOTHING_FOUND = 2
_BLKID_AMBIVALENT = 8


class FilesystemRefused(MountError):  # noqa: N818 - reads as the situation, like the other MountErrors
    """The volume's filesystem type is not one this camera may be mounted as, or cannot be told."""

    exit_code = 28
    wire_code = "filesystem-refused"


log = structlog.get_logger()


def _run(args: Sequence[str], timeout_s: float = _TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=timeout_s)


def _error_text(done: subprocess.CompletedProcess[str]) -> str:
    return (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"


def detect_fstype(block_device: str, device_name: str) -> str:
    """The one filesystem type blkid's low-level probe (no cache) finds on the device; refused when it
    finds none or signatures of several types."""
    if shutil.which("blkid") is None:
        raise MountError(
            device_name, "mount", "blkid (util-linux) is not installed: cannot tell the filesystem"
        )
    try:
        done = _run(["blkid", "-p", "-o", "value", "-s", "TYPE", "--", block_device])
    except subprocess.TimeoutExpired:
        raise MountError(device_name, "mount", f"{block_device}: blkid timed out") from None
    found = done.stdout.strip()
    if done.returncode == 0 and found and "\n" not in found:
        return found
    if done.returncode == _BLKID_AMBIVALENT:
        detail = "signatures of more than one filesystem (blkid: ambivalent); refusing to guess"
    elif done.returncode == _BLKID_NOTHING_FOUND and Path(block_device).exists():
        detail = "no filesystem that blkid recognises"
    else:
        raise MountError(device_name, "mount", f"{block_device}: blkid: {_error_text(done)}")
    raise FilesystemRefused(device_name, "mount", f"{block_device}: {detail}")


def _allowed_fstype(block_device: str, device_name: str, fstypes: Sequence[str]) -> str:
    fstype = detect_fstype(block_device, device_name)
    if fstype not in fstypes:
        raise FilesystemRefused(
            device_name,
            "mount",
            f"{block_device}: filesystem {fstype!r} is not allowed for this camera (allowed: "
            f"{', '.join(fstypes)}; a [[camera]] rule's filesystems can allow more)",
        )
    return fstype


def kernel_filesystems() -> frozenset[str]:
    """Block filesystems the running kernel offers now (modules not yet loaded are not listed)."""
    try:
        text = Path("/proc/filesystems").read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    return frozenset(line.split()[-1] for line in text.splitlines() if line.strip())


def _unmount(mount_point: Path, device_name: str) -> str | None:
    """Unmount, lazily if busy or hung; return an error text if the mount could not be detached."""
    try:
        done = _run(["umount", "--", str(mount_point)])
        if done.returncode == 0:
            return None
        first_error = _error_text(done)
    except subprocess.TimeoutExpired:
        first_error = "umount timed out"
    log.warning("volume.unmount_busy", device=device_name, mount_point=str(mount_point), error=first_error)
    try:
        lazy = _run(["umount", "-l", "--", str(mount_point)])
    except subprocess.TimeoutExpired:
        return f"{first_error}; lazy umount timed out"
    return None if lazy.returncode == 0 else f"{first_error}; lazy umount: {_error_text(lazy)}"


def _remove_private_dir(private: Path, mount_point: Path, device_name: str) -> None:
    for directory in (mount_point, private):
        try:
            directory.rmdir()
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warning("volume.cleanup_failed", device=device_name, path=str(directory), error=str(error))


@contextlib.contextmanager
def mount_readonly(
    block_device: str,
    *,
    device_name: str,
    fstypes: Sequence[str] = DEFAULT_FSTYPES,
    base_dir: Path | None = None,
    diskseq: str | None = None,
) -> Iterator[Path]:
    """Mount `block_device` read-only as one of `fstypes` and yield the mount point; unmount and clean
    up on exit. With `diskseq` (the DISKSEQ the dock saw), the filesystem mounted must be on that disk
    instance: the mount goes by node name, and a node can come to name another disk between the check
    before it and the mount, so the mounted filesystem's own device is checked after it."""
    unsupported = [fstype for fstype in fstypes if fstype not in _FS_OPTIONS]
    if unsupported:
        raise MountError(device_name, "mount", f"filesystem types not supported: {', '.join(unsupported)}")
    if not fstypes:
        raise MountError(device_name, "mount", "no filesystem type allowed")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        raise MountError(device_name, "mount", "mount(8) and umount(8) are not installed")
    try:
        fstype = _allowed_fstype(block_device, device_name, fstypes)
    except FilesystemRefused as refused:
        log.error("volume.refused", device=device_name, block=block_device, error=refused.detail)  # noqa: TRY400 - the refusal is the whole story
        raise
    private = Path(tempfile.mkdtemp(prefix="ingestd-volume-", dir=base_dir))  # mode 0700
    mount_point = private / "volume"
    mount_point.mkdir(mode=0o700)
    options = f"{MOUNT_OPTIONS},{_FS_OPTIONS[fstype]}"
    try:
        done = _run(["mount", "-t", fstype, "-o", options, "--", block_device, str(mount_point)])
        failure = None if done.returncode == 0 else _error_text(done)
    except subprocess.TimeoutExpired:
        failure = "mount timed out"
        # A timed-out mount may still complete in the kernel: make sure nothing stays attached.
        if os.path.ismount(mount_point):
            _unmount(mount_point, device_name)
    if failure is not None:
        _remove_private_dir(private, mount_point, device_name)
        detail = f"{block_device}: {fstype}: {failure}"
        log.error("volume.mount_failed", device=device_name, block=block_device, error=detail)
        raise MountError(device_name, "mount", detail)
    log.info("volume.mounted", device=device_name, block=block_device, fstype=fstype)
    if diskseq is not None and (mounted_seq := mounted_disk_sequence(mount_point)) != diskseq:
        problem = _unmount(mount_point, device_name)
        if problem is None:
            _remove_private_dir(private, mount_point, device_name)
        detail = (
            f"{block_device}: the filesystem mounted is on disk instance {mounted_seq}, not {diskseq}, "
            "the one that docked"
        )
        log.error(
            "volume.not_the_docked_disk",
            device=device_name,
            block=block_device,
            error=detail,
            unmount_error=problem,
        )
        raise MountError(device_name, "mount", detail)
    failed = False
    try:
        yield mount_point
    except BaseException:
        failed = True
        raise
    finally:
        problem = _unmount(mount_point, device_name)
        if problem is None:
            _remove_private_dir(private, mount_point, device_name)
            log.info("volume.unmounted", device=device_name, block=block_device)
        else:
            log.error(
                "volume.unmount_failed", device=device_name, mount_point=str(mount_point), error=problem
            )
            if not failed:  # never mask the exception that ended the block
                raise MountError(device_name, "umount", f"{mount_point}: {problem}")


def block_device_present(node: str) -> bool:
    """Is the block device still attached? A USB disk's node disappears on unplug; a loop device's node
    stays after detach, so for those the kernel's backing-file entry is what tells."""
    path = Path(node)
    if not path.exists():
        return False
    if path.name.startswith("loop"):
        return Path("/sys/class/block", path.name, "loop", "backing_file").exists()
    return True


def disk_sequence(node: str) -> str | None:
    """The kernel's sequence number of the disk instance `node` names now (its `diskseq`, also the
    DISKSEQ of its uevents; a partition's is its disk's), or None when it is gone or the kernel has
    none. A re-enumerated disk that got the same name has another: the name alone does not tell."""
    try:
        return _sequence_of(Path(node).stat().st_rdev)
    except OSError:
        return None


def mounted_disk_sequence(mount_point: Path) -> str | None:
    """The `diskseq` of the disk instance the filesystem mounted at `mount_point` is on (or None)."""
    try:
        return _sequence_of(mount_point.stat().st_dev)
    except OSError:
        return None


def _sequence_of(device: int) -> str | None:
    try:
        sysfs = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}").resolve()
        disk = sysfs.parent if (sysfs / "partition").exists() else sysfs
        return (disk / "diskseq").read_text(encoding="ascii").strip() or None
    except (OSError, ValueError):
        return None
