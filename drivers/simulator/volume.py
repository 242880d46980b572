"""A simulated camera volume: realistic recordings, an identity file, and optionally hostile entries.

Everything is deterministic from `seed`. Recordings carry real `mvhd` headers (UTC) and firmware-style
names in the camera's local time; their mtime is the end of the recording, as cameras close files.
The hostile extras are what a broken or malicious camera can present to the scanner: literal `..`-ish
names, a 255-byte name, GBK and undecodable names, newlines and terminal escapes in names, symlinks to
a file and a directory outside the volume, a fifo, a socket, a device node (as root), a recording
whose boxes lie about their sizes, and a directory chain deeper than a scanner walks (with a fifo deep
inside), whose display paths are far longer than a catalog column.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import stat
import subprocess
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import structlog

from drivers.base import CameraIdentity
from drivers.mass_storage import IDENTITY_FILE, format_identity_file
from drivers.mp4 import overhead_bytes, write_mp4

MEDIA_DIR = Path("DCIM/100MEDIA")
NAME_TZ = "Asia/Shanghai"
# Targets of the hostile symlinks: present on every Linux host, so a scanner that follows links shows it.
OUTSIDE_FILE = "/etc/passwd"
OUTSIDE_DIR = "/etc"
# Raw relative paths of the hostile entries that are not recordings (refused by a correct scanner).
HOSTILE_LINK_FILE = b"DCIM/100MEDIA/passwd.MP4"  # -> OUTSIDE_FILE
HOSTILE_LINK_DIR = b"DCIM/etc"  # -> OUTSIDE_DIR
HOSTILE_LINK_RELATIVE = b"DCIM/100MEDIA/up.MP4"  # -> ../../../../../../../../etc/passwd
HOSTILE_DOTS = b"..evil"  # a plain file, not a recording
HOSTILE_FIFO = b"DCIM/100MEDIA/fifo.MP4"
HOSTILE_SOCKET = b"DCIM/100MEDIA/socket.MP4"
HOSTILE_DEVICE = b"DCIM/100MEDIA/null.MP4"  # a character device, only when built as root
# One level of the deep chain; HOSTILE_DEEP_LEVELS of them is past the scanner's depth limit (32).
HOSTILE_DEEP_LEVEL = b"deep-level-"
HOSTILE_DEEP_LEVELS = 34
HOSTILE_DEEP_FIFO_DEPTH = 24  # a fifo this deep: a rejected entry whose path is ~300 characters

log = structlog.get_logger()


def _recording_name(serial: str, local: datetime, number: int) -> str:
    return f"ZFY{serial}_{local:%Y%m%d}_{local:%H%M%S}_{number:04d}.MP4"


def _write(
    path: Path,
    created_at: datetime,
    duration_s: float,
    *,
    size_bytes: int,
    rng: random.Random,
    version: int = 0,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = max(0, size_bytes - overhead_bytes(mvhd_version=version))
    write_mp4(
        path,
        created_at=created_at,
        payload_size=payload,
        duration_s=duration_s,
        mvhd_version=version,
        seed=rng.getrandbits(63),
    )
    closed = (created_at + timedelta(seconds=duration_s)).timestamp()
    os.utime(path, (closed, closed), follow_symlinks=False)


def _write_lying_boxes(path: Path, size_bytes: int, rng: random.Random) -> None:
    """An MP4 whose moov claims 4 GiB and whose mvhd is cut short: no time in it is believable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.write(b"\x00\x00\x00\x10ftypisom\x00\x00\x02\x00")
        out.write(b"\x00\x00\x00\x10free" + rng.randbytes(8))
        out.write(b"\xff\xff\xff\xffmoov" + b"\x00\x00\x00\x0cmvhd\x00\x00\x00\x00")
        out.write(rng.randbytes(max(0, size_bytes - out.tell())))


def build_volume(
    root: Path,
    *,
    device_serial: str,
    officer_name: str,
    count: int,
    size_bytes: int,
    start: datetime,
    seed: int,
    hostile: bool = False,
    officer_no: str = "000001",
    unit_no: str = "110105000000",
    unit_name: str = "",
    name_tz: str = NAME_TZ,
) -> list[Path]:
    """Fill `root` like a camera's card; return the recording files (hostile-named ones last).

    `start` (timezone-aware) is when the first recording began; each recording has its own random
    duration and the gaps between them are random too. `size_bytes` is each recording's file size.
    """
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    rng = random.Random(seed)  # noqa: S311 - deterministic simulation, not secrets
    zone = ZoneInfo(name_tz)
    root.mkdir(parents=True, exist_ok=True)
    identity = CameraIdentity(
        device_serial=device_serial,
        officer_no=officer_no,
        officer_name=officer_name,
        unit_no=unit_no,
        unit_name=unit_name,
        source="identity-file",
    )
    (root / IDENTITY_FILE).write_bytes(format_identity_file(identity))
    recordings: list[Path] = []
    began = start
    for number in range(1, count + 1):
        duration = float(rng.randint(30, 900))
        path = root / MEDIA_DIR / _recording_name(device_serial, began.astimezone(zone), number)
        _write(path, began, duration, size_bytes=size_bytes, rng=rng, version=1 if rng.random() < 0.25 else 0)
        recordings.append(path)
        # Cameras split long recordings every few minutes (about a second apart) or stop between events.
        gap = rng.choice((1, 1, 2, rng.randint(60, 3600)))
        began = began + timedelta(seconds=duration + gap)
    if hostile:
        recordings.extend(_add_hostile(root, device_serial, began.astimezone(zone), size_bytes, rng))
    return recordings


def _add_hostile(root: Path, serial: str, local: datetime, size_bytes: int, rng: random.Random) -> list[Path]:
    # Path with surrogate-escaped names maps back to the exact raw bytes on Linux.
    def at(name: bytes) -> Path:
        return root / os.fsdecode(name)

    stamp = f"{local:%Y%m%d}_{local:%H%M%S}"
    long_stem = f"ZFY{serial}_{stamp}_"
    names: list[bytes] = [
        b"..evil.MP4",
        b"DCIM/.../.. /..evil.MP4",
        (long_stem + "L" * (255 - len(long_stem) - 4) + ".MP4").encode(),  # exactly 255 bytes
        b"DCIM/100MEDIA/" + f"执法仪_{stamp}.MP4".encode("gbk"),
        b"DCIM/" + "录像".encode("gbk") + f"/ZFY{serial}_{stamp}_0001.MP4".encode(),
        b"DCIM/100MEDIA/\xff\xfe_" + stamp.encode() + b".MP4",  # neither UTF-8 nor GBK
        f"DCIM/100MEDIA/ZFY{serial}_{stamp}_line1\nline2.MP4".encode(),
        b"DCIM/100MEDIA/\x1b[31mred\x1b[0m_" + stamp.encode() + b".MP4",
        "DCIM/100MEDIA/evil\u202e4PM.MP4".encode(),
    ]
    made: list[Path] = []
    for offset, name in enumerate(names):
        path = at(name)
        _write(path, local + timedelta(minutes=offset), 60.0, size_bytes=size_bytes, rng=rng)
        made.append(path)
    lying = root / MEDIA_DIR / f"ZFY{serial}_{stamp}_9999.MP4"
    _write_lying_boxes(lying, size_bytes, rng)
    made.append(lying)

    at(HOSTILE_DOTS).write_bytes(rng.randbytes(64))
    at(HOSTILE_LINK_FILE).symlink_to(OUTSIDE_FILE)
    at(HOSTILE_LINK_DIR).symlink_to(OUTSIDE_DIR, target_is_directory=True)
    at(HOSTILE_LINK_RELATIVE).symlink_to("../../../../../../../../etc/passwd")
    os.mkfifo(at(HOSTILE_FIFO))
    os.mknod(at(HOSTILE_SOCKET), stat.S_IFSOCK | 0o644)
    if os.geteuid() == 0:
        os.mknod(at(HOSTILE_DEVICE), stat.S_IFCHR | 0o644, os.makedev(1, 3))
    at(hostile_deep_path(HOSTILE_DEEP_LEVELS)).mkdir(parents=True)
    os.mkfifo(at(hostile_deep_path(HOSTILE_DEEP_FIFO_DEPTH) + b"/fifo.MP4"))
    return made


def hostile_deep_path(levels: int) -> bytes:
    """The raw relative path of the deep chain's directory `levels` below DCIM."""
    return b"/".join([b"DCIM", *(HOSTILE_DEEP_LEVEL + b"%02d" % level for level in range(1, levels + 1))])


def _tree_bytes(directory: Path) -> int:
    _folders, files = _copyable(directory, quiet=True)
    return sum((directory / name).lstat().st_size for name in files)


def make_image(directory: Path, image: Path, *, fstype: str = "ext4", size_mib: int | None = None) -> Path:
    """Build a filesystem image holding `directory`'s tree, as a camera card would hold it.

    ext4 copies everything, special files and symlinks included (`mkfs.ext4 -d`, no mount needed).
    vfat can hold only directories and regular files; the rest is skipped and logged. It is filled
    with mtools when installed, else by loop-mounting the image (root only).
    """
    if size_mib is None:
        size_mib = max(16, math.ceil(_tree_bytes(directory) * 1.3 / 2**20) + 16)
    with image.open("wb") as out:
        out.truncate(size_mib * 2**20)
    if fstype.startswith("ext"):
        _run([f"mkfs.{fstype}", "-q", "-F", "-L", "CAMERA", "-d", str(directory), str(image)])
    elif fstype == "vfat":
        _run(["mkfs.vfat", "-n", "CAMERA", str(image)])
        if shutil.which("mcopy") is not None and shutil.which("mmd") is not None:
            _fill_vfat_with_mtools(directory, image)
        else:
            _fill_by_loop_mount(directory, image)
    else:
        raise ValueError(f"unsupported image filesystem {fstype!r}")
    return image


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(args, capture_output=True, check=False, env=env)
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip()
        raise RuntimeError(f"{args[0]} failed ({done.returncode}): {message}")
    return done


def _copyable(directory: Path, *, quiet: bool = False) -> tuple[list[Path], list[Path]]:
    """Relative directories (parents first) and regular files of the tree, never following links."""
    folders: list[Path] = []
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(directory):  # never follows symlinks
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode):
                folders.append(path.relative_to(directory))
            elif stat.S_ISREG(mode):
                files.append(path.relative_to(directory))
            elif not quiet:
                log.warning("simulator.vfat_skipped", path=str(path), reason="not a regular file")
    return folders, files


def _fill_vfat_with_mtools(directory: Path, image: Path) -> None:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C.UTF-8"}
    folders, files = _copyable(directory)
    skipped: list[Path] = []
    for folder in folders:
        if any(folder.is_relative_to(parent) for parent in skipped):
            continue
        try:
            _run(["mmd", "-i", str(image), f"::/{folder}"], env=env)
        except RuntimeError as error:
            skipped.append(folder)
            log.warning("simulator.vfat_skipped", path=str(folder), reason=str(error))
    for name in files:
        if any(name.is_relative_to(parent) for parent in skipped):
            continue
        try:
            _run(["mcopy", "-m", "-i", str(image), str(directory / name), f"::/{name}"], env=env)
        except RuntimeError as error:
            log.warning("simulator.vfat_skipped", path=str(name), reason=str(error))


def _fill_by_loop_mount(directory: Path, image: Path) -> None:
    if os.geteuid() != 0:
        raise RuntimeError("filling a vfat image needs mtools (mcopy, mmd) or root to loop-mount it")
    folders, files = _copyable(directory)
    with tempfile.TemporaryDirectory(prefix="ingestd-image-") as mount_point:
        # `-o loop` attaches with autoclear: the loop device goes away with the unmount.
        _run(["mount", "-o", "loop,utf8", str(image), mount_point])
        try:
            target = Path(mount_point)
            for folder in folders:
                try:
                    (target / folder).mkdir(parents=True, exist_ok=True)
                except OSError as error:
                    log.warning("simulator.vfat_skipped", path=str(folder), reason=str(error))
            for name in files:
                try:
                    shutil.copy2(directory / name, target / name)
                except OSError as error:  # FAT refuses some names (invalid UTF-8, reserved characters)
                    log.warning("simulator.vfat_skipped", path=str(name), reason=str(error))
        finally:
            _run(["umount", mount_point])
