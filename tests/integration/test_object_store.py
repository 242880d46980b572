"""FileObjectStore on real ext4 loop mounts: the immutable attribute, read-back, dedup of a corrupted
object, disk full, resume after SIGKILL, reconcile, and scrub against a root attacker."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import mmap
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, cast

import blake3
import pytest
from structlog.testing import capture_logs

from store.errors import DiskFullError, ExistingObjectCorruptError, IntegrityError, ReadBackMismatchError
from store.objects import (
    ExpectedObject,
    FileObjectStore,
    MiB,
    ProblemKind,
    Seal,
    is_immutable,
)
from tests.support.loopdev import attached, ext4_filesystem, make_image, mounted, require_root_tools
from tests.support.objectstore import UnpluggedCamera, rot_below_filesystem, unseal_tree
from tests.support.osusers import OsUsers, can_manage_users, run_python_as

pytestmark = pytest.mark.root
KiB = 1024
REPO = Path(__file__).resolve().parents[2]
FIBMAP = 1  # _IO(0x00, 1): physical block of a logical block, root only


@pytest.fixture(autouse=True)
def _root_tools(tmp_path: Path) -> Iterator[None]:
    require_root_tools("mkfs.ext4", "chattr", "lsattr")
    yield
    unseal_tree(tmp_path)  # pytest cannot delete immutable files


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    with ext4_filesystem(tmp_path, 128, name="store") as mount_point:
        yield mount_point
        unseal_tree(mount_point)


def payload(size: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"evidence-{seed}".encode()).digest(size)


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def camera(data: bytes, fail_after: int) -> BinaryIO:
    return cast(BinaryIO, io.BufferedReader(UnpluggedCamera(data, fail_after)))


def chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


def flip_byte(path: Path, offset: int) -> None:
    """What a root attacker does: lift the seal, change one byte, put the seal back."""
    chattr("-i", path)
    path.chmod(0o644)
    with path.open("r+b") as handle:
        handle.seek(offset)
        original = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([original[0] ^ 0xFF]))
    path.chmod(0o444)
    chattr("+i", path)


def test_a_stored_object_is_immutable_even_for_root(ext4: Path) -> None:
    store = FileObjectStore(ext4 / "s").create_directories()
    data = payload(2 * MiB)
    result = store.put(io.BytesIO(data))
    digest = blake3.blake3(data).hexdigest()
    assert result.path == ext4 / "s" / "objects" / digest[:2] / digest[2:4] / digest
    assert result.seal is Seal.IMMUTABLE
    assert oct(result.path.stat().st_mode & 0o7777) == oct(0o444)
    assert (
        "i"
        in subprocess.run(
            ["lsattr", str(result.path)], check=True, capture_output=True, text=True
        ).stdout.split()[0]
    )
    assert is_immutable(result.path)
    with pytest.raises(PermissionError):
        result.path.open("r+b")
    with pytest.raises(PermissionError):
        result.path.rename(result.path.with_name("renamed"))
    with pytest.raises(PermissionError):
        result.path.unlink()
    with pytest.raises(PermissionError):
        result.path.chmod(0o644)
    with pytest.raises(PermissionError):
        os.link(result.path, ext4 / "s" / "hardlink")
    assert result.path.read_bytes() == data
    assert files_under(ext4 / "s" / "partial") == []


@contextlib.contextmanager
def ramfs(mount_point: Path) -> Iterator[Path]:
    """ramfs has no inode flags at all: FS_IOC_SETFLAGS fails there as on any filesystem without them."""
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mount_point)], check=True, capture_output=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False, capture_output=True)


def test_the_seal_falls_back_to_read_only_on_a_filesystem_without_the_attribute(tmp_path: Path) -> None:
    with ramfs(tmp_path / "ram") as mount_point, capture_logs() as logs:
        store = FileObjectStore(mount_point / "s").create_directories()
        results = [store.put(io.BytesIO(payload(MiB, seed))) for seed in (1, 2)]
        assert [r.seal for r in results] == [Seal.READ_ONLY, Seal.READ_ONLY]
        assert all(r.path.stat().st_mode & 0o7777 == 0o444 for r in results)
        assert store.verify_object(results[0].blake3, results[0].sha256, MiB) == []
    # ramfs refuses O_DIRECT too; that warning is test_read_back_where_o_direct_is_refused_logs_why_...
    warnings = [e for e in logs if e["log_level"] == "warning" and "O_DIRECT" not in e["event"]]
    assert len(warnings) == 1
    assert "immutable" in warnings[0]["event"]
    assert warnings[0]["store"] == str(mount_point / "s")


def test_the_seal_falls_back_to_read_only_without_cap_linux_immutable(ext4: Path) -> None:
    if subprocess.run(["which", "setpriv"], capture_output=True, check=False).returncode != 0:
        pytest.skip("setpriv is not installed")
    script = (
        "import io, json, sys\n"
        "from pathlib import Path\n"
        "from structlog.testing import capture_logs\n"
        "from store.objects import FileObjectStore\n"
        "with capture_logs() as logs:\n"
        "    store = FileObjectStore(Path(sys.argv[1])).create_directories()\n"
        "    seals = [store.put(io.BytesIO(bytes([n]) * 4096)).seal for n in range(3)]\n"
        "print(json.dumps({'seals': seals, 'warnings': [e for e in logs if e['log_level'] == 'warning']}))\n"
    )
    done = subprocess.run(
        ["setpriv", "--bounding-set", "-linux_immutable", sys.executable, "-c", script, str(ext4 / "s")],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    report = json.loads(done.stdout)
    assert report["seals"] == ["read-only"] * 3
    assert len(report["warnings"]) == 1
    assert report["warnings"][0]["errno"] == "EPERM"


def test_read_back_catches_a_byte_changed_on_the_medium(tmp_path: Path) -> None:
    """A bad disk, for real: after the final fsync, one byte of the copy is changed in the loop device's
    backing image, underneath ext4. Only a re-read from the medium can see it."""
    data = payload(3 * MiB)
    # ext4_filesystem(tmp_path, ..., name="store") keeps its image at tmp_path / "store.img".
    rot = rot_below_filesystem(tmp_path / "store.img")

    with ext4_filesystem(tmp_path, 64, name="store") as mount_point:
        store = FileObjectStore(mount_point / "s", on_synced=rot).create_directories()
        with capture_logs() as logs, pytest.raises(ReadBackMismatchError) as caught:
            store.put(io.BytesIO(data), resume_key="A.MP4")
        assert isinstance(caught.value, IntegrityError)
        # ext4 takes O_DIRECT: the read-back went to the medium, not through a fallback.
        assert not [e for e in logs if "without O_DIRECT" in e["event"]]
        assert files_under(mount_point / "s" / "objects") == []
        assert files_under(mount_point / "s" / "partial") == []
        [quarantined] = files_under(mount_point / "s" / "quarantine")
        assert str(quarantined) in str(caught.value)
        stored = quarantined.read_bytes()
        assert len(stored) == len(data)
        assert sum(a != b for a, b in zip(stored, data, strict=True)) == 1

        # The same rot without read-back goes unnoticed by put; only a later scrub would find it.
        careless = FileObjectStore(mount_point / "t", on_synced=rot, read_back=False).create_directories()
        result = careless.put(io.BytesIO(data))
        assert not result.read_back_verified
        kinds = {p.kind for p in careless.verify_object(result.blake3, result.sha256, result.size)}
        assert kinds == {ProblemKind.BLAKE3_MISMATCH, ProblemKind.SHA256_MISMATCH}
        unseal_tree(mount_point)


def test_a_read_back_through_the_page_cache_that_cannot_drop_the_copy_proves_nothing(tmp_path: Path) -> None:
    """Where the read-back goes through the page cache (here: a chunk size O_DIRECT cannot use), it drops
    the copy's pages first so as to read the medium. A page that stays cached (here another process
    holds the copy mapped) is read from memory, so a byte rotted underneath ext4 would pass. The store
    checks that no page stayed; where one did, it keeps the copy but does not call it verified, so the
    camera keeps its file."""
    data = payload(3 * MiB)
    rot = rot_below_filesystem(tmp_path / "store.img")
    held: list[tuple[BinaryIO, mmap.mmap]] = []

    def rot_while_mapped(partial: Path) -> None:
        handle = partial.open("rb")
        mapping = mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ)
        assert sum(mapping[::4096]) >= 0  # every page read in, from the medium, before the rot
        held.append((handle, mapping))
        rot(partial)

    with ext4_filesystem(tmp_path, 64, name="store") as mount_point:
        store = FileObjectStore(mount_point / "s", chunk_size=100_000, on_synced=rot_while_mapped)
        store.create_directories()
        try:
            with capture_logs() as logs:
                result = store.put(io.BytesIO(data))
        finally:
            for handle, mapping in held:
                mapping.close()
                handle.close()
        assert not result.read_back_verified
        [unproven] = [e for e in logs if e["event"].startswith("read-back not proven")]
        assert unproven["log_level"] == "warning"
        assert "stayed in the page cache" in unproven["reason"]
        # Nothing holds its pages now: a scrub reads the medium and finds the rot the read-back could not.
        kinds = {p.kind for p in store.verify_object(result.blake3, result.sha256, result.size)}
        assert kinds == {ProblemKind.BLAKE3_MISMATCH, ProblemKind.SHA256_MISMATCH}
        # The same store proves a copy whose pages it could drop; a second put of the same bytes proves the
        # stored copy the same way, and not while its pages are held in memory.
        plain = FileObjectStore(mount_point / "t", chunk_size=100_000).create_directories()
        first = plain.put(io.BytesIO(payload(MiB, seed=3)))
        assert first.read_back_verified
        with first.path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ) as mapping:
            assert sum(mapping[::4096]) >= 0
            with capture_logs() as logs:
                again = plain.put(io.BytesIO(payload(MiB, seed=3)))
            [unread] = plain.verify_object(first.blake3, first.sha256, first.size)  # a scrub, likewise
            assert unread.kind is ProblemKind.UNREAD
        assert (again.deduplicated, again.read_back_verified) == (True, False)
        assert [e["event"] for e in logs] == [
            "stored copy not proven to have been read from the medium: not verified"
        ]
        assert plain.put(io.BytesIO(payload(MiB, seed=3))).read_back_verified
        unseal_tree(mount_point)


def test_a_reader_of_a_stored_object_does_not_make_its_re_read_unproven(ext4: Path) -> None:
    """Another reader (the replicator, an export) keeps bringing an object's pages back into the page
    cache. The re-read that proves a stored copy (a re-dock, deduplication, verify) uses O_DIRECT where
    the store can, so those pages neither fake the proof nor spoil it."""
    store = FileObjectStore(ext4 / "s").create_directories()
    result = store.put(io.BytesIO(payload(8 * MiB, seed=4)))
    reading = threading.Event()
    done = threading.Event()

    def read_again_and_again() -> None:
        while not done.is_set():
            result.path.read_bytes()
            reading.set()

    reader = threading.Thread(target=read_again_and_again)
    reader.start()
    try:
        assert reading.wait(10)
        found = [store.verify_object(result.blake3, result.sha256, result.size) for _ in range(5)]
        again = store.put(io.BytesIO(payload(8 * MiB, seed=4)))
    finally:
        done.set()
        reader.join()
    assert found == [[]] * 5
    assert (again.deduplicated, again.read_back_verified, again.unread) == (True, True, None)
    unseal_tree(ext4)


def test_on_overlayfs_a_read_back_through_the_page_cache_proves_nothing(tmp_path: Path) -> None:
    """cachestat counts the overlay's own cache, always empty: reads come from the lower or upper
    file's. There a read-back through the page cache cannot show it read the medium."""
    layers = {name: tmp_path / name for name in ("lower", "upper", "work", "merged")}
    for layer in layers.values():
        layer.mkdir()
    options = f"lowerdir={layers['lower']},upperdir={layers['upper']},workdir={layers['work']}"
    with mounted("overlay", layers["merged"], options, fstype="overlay") as merged:
        store = FileObjectStore(merged / "s", chunk_size=100_000).create_directories()  # no O_DIRECT
        result = store.put(io.BytesIO(payload(MiB, seed=5)))
        assert not result.read_back_verified
        assert result.unread == "reads on overlayfs come from a cache the kernel does not count"
        unseal_tree(merged)


def test_where_the_kernel_refuses_to_count_cached_pages_the_re_read_proves_nothing(tmp_path: Path) -> None:
    """The kernel counts a file's cached pages only for a caller who owns it or may write it. A user who
    may only read a store that reads through the page cache (here a chunk size O_DIRECT cannot use) gets
    `unread` from verify, not a clean report it cannot back."""
    reason = can_manage_users()
    if reason is not None:
        pytest.skip(reason)
    with ext4_filesystem(tmp_path, 64, name="store") as mount_point:
        store = FileObjectStore(mount_point / "s", chunk_size=100_000).create_directories()
        result = store.put(io.BytesIO(payload(MiB, seed=6)))
        assert result.read_back_verified  # root may count
        for directory in [mount_point / "s", *(mount_point / "s").rglob("*")]:
            if directory.is_dir():
                directory.chmod(0o755)  # readable by anyone, as an auditor's group would be
        check = (
            "import sys; from pathlib import Path; from store.objects import FileObjectStore, Seal\n"
            "store = FileObjectStore(Path(sys.argv[1]), chunk_size=100_000)\n"
            "blake3, sha256, size, seal = sys.argv[2:]\n"
            "found = store.verify_object(blake3, sha256, int(size), seal=Seal(seal))\n"
            "print([(p.kind.value, p.detail) for p in found])"
        )
        users = OsUsers()
        try:
            user = users.user("rd", [])
            done = run_python_as(
                user,
                "-c",
                check,
                str(mount_point / "s"),
                result.blake3,
                result.sha256,
                str(result.size),
                result.seal.value,
                cwd=mount_point / "s",  # run_python_as makes it reachable below the test's 0700 tmp_path
            )
        finally:
            users.remove()
        assert done.returncode == 0, done.stderr
        assert "('unread', 'the kernel refused to count its cached pages (EPERM)')" in done.stdout
        unseal_tree(mount_point)


def test_read_back_where_o_direct_is_refused_logs_why_and_still_verifies(tmp_path: Path) -> None:
    """ramfs refuses O_DIRECT (EINVAL): the read-back falls back to the page cache, says so once per
    store with the reason, and the objects are still verified."""
    with ramfs(tmp_path / "ram") as mount_point:
        store = FileObjectStore(mount_point / "s").create_directories()
        with capture_logs() as logs:
            first = store.put(io.BytesIO(payload(MiB + 5, seed=1)))
            second = store.put(io.BytesIO(payload(3, seed=2)))
        assert first.read_back_verified
        assert second.read_back_verified
        assert first.path.read_bytes() == payload(MiB + 5, seed=1)
        [fallback] = [e for e in logs if "without O_DIRECT" in e["event"]]
        assert fallback["log_level"] == "warning"
        assert fallback["reason"] == "the filesystem refuses O_DIRECT (EINVAL)"
        assert fallback["store"] == str(mount_point / "s")


def test_a_store_where_o_direct_goes_through_the_page_cache_says_so(tmp_path: Path) -> None:
    """ext4 with data=journal takes O_DIRECT on open and fcntl but serves it through the page cache:
    statx tells, and the store logs it once with that reason instead of believing its reads bypass the
    cache. The read-back drops the copy's pages and checks that none stayed, so it still reads the
    medium and the puts are verified."""
    image = make_image(tmp_path / "journal.img", 64)
    with attached(image) as device, mounted(device, tmp_path / "journal", "data=journal") as mount_point:
        store = FileObjectStore(mount_point / "s", chunk_size=64 * KiB).create_directories()
        data = payload(MiB + 100, seed=14)
        with capture_logs() as logs:
            first = store.put(io.BytesIO(data))
            store.put(io.BytesIO(payload(MiB, seed=15)))
        assert first.read_back_verified
        assert first.path.read_bytes() == data
        [warning] = [e for e in logs if "without O_DIRECT" in e["event"]]
        assert "serves it through the page cache" in warning["reason"]
        assert "checking that none stayed" in warning["reason"]
        assert not [e for e in logs if e["event"].startswith("read-back not proven")]
        unseal_tree(mount_point)


@pytest.mark.parametrize("from_file", [False, True], ids=["stream", "regular-file"])
def test_o_direct_copies_and_reads_back_files_of_every_alignment(ext4: Path, from_file: bool) -> None:
    """O_DIRECT moves whole pages: sizes around the page and chunk edges are copied (a regular file is
    read with O_DIRECT too), written (the unaligned tail through the page cache) and read back whole."""
    store = FileObjectStore(ext4 / "s", chunk_size=64 * KiB).create_directories()
    for seed, size in enumerate((0, 1, 4095, 4096, 4097, 64 * KiB, 64 * KiB + 1, 3 * 64 * KiB - 1)):
        data = payload(size, seed=seed)
        if from_file:
            (ext4 / "source.bin").write_bytes(data)
            with (ext4 / "source.bin").open("rb", buffering=0) as source:
                result = store.put(source)
        else:
            result = store.put(io.BytesIO(data))
        assert result.read_back_verified
        assert result.size == size
        assert result.path.read_bytes() == data


def test_a_put_reports_the_time_of_each_pass_it_ran(ext4: Path) -> None:
    """The copy and the read-back are timed apart (what an ingest summary splits its seconds by); a pass
    that did not run reports 0, and a deduplicated put still reports the copy it made."""
    data = payload(MiB)
    checked = FileObjectStore(ext4 / "checked", chunk_size=64 * KiB).create_directories()
    first = checked.put(io.BytesIO(data))
    assert first.copy_seconds > 0
    assert first.read_back_seconds > 0
    again = checked.put(io.BytesIO(data))
    assert again.deduplicated
    assert again.copy_seconds > 0
    unchecked = FileObjectStore(ext4 / "unchecked", read_back=False).create_directories()
    result = unchecked.put(io.BytesIO(data))
    assert not result.read_back_verified
    assert result.copy_seconds > 0
    assert result.read_back_seconds == 0


def test_a_regular_file_source_is_left_as_it_was_found_past_what_was_read(ext4: Path) -> None:
    """The copy reads a regular file with O_DIRECT on its own descriptor: afterwards the flag is gone
    (an unaligned read works again), the position is past what was read, and a source at an unaligned
    position is copied from there."""
    store = FileObjectStore(ext4 / "s").create_directories()
    data = payload(MiB + 100, seed=7)
    (ext4 / "source.bin").write_bytes(data)
    with (ext4 / "source.bin").open("rb", buffering=0) as source:
        assert store.put(source).size == len(data)
        assert not fcntl.fcntl(source.fileno(), fcntl.F_GETFL) & os.O_DIRECT
        assert source.tell() == len(data)
        source.seek(3)
        assert source.read(5) == data[3:8]
        source.seek(5)
        result = store.put(source)
        assert result.path.read_bytes() == data[5:]
        assert source.tell() == len(data)


def test_dedup_refuses_a_corrupted_existing_object(ext4: Path) -> None:
    store = FileObjectStore(ext4 / "s").create_directories()
    data = payload(MiB)
    first = store.put(io.BytesIO(data))
    flip_byte(first.path, 4096)
    with pytest.raises(ExistingObjectCorruptError, match="does not match") as caught:
        store.put(io.BytesIO(data))
    assert isinstance(caught.value, IntegrityError)
    assert files_under(ext4 / "s" / "partial") == []
    assert files_under(ext4 / "s" / "objects") == [first.path]
    assert first.path.read_bytes() != data  # left untouched for investigation
    assert is_immutable(first.path)


def test_dedup_finishes_a_seal_a_crash_left_undone(ext4: Path) -> None:
    store = FileObjectStore(ext4 / "s").create_directories()
    data = payload(MiB)
    first = store.put(io.BytesIO(data))
    chattr("-i", first.path)  # as if the daemon died between link and seal
    second = store.put(io.BytesIO(data))
    assert second.deduplicated
    assert second.seal is Seal.IMMUTABLE
    assert is_immutable(first.path)


def test_disk_full_removes_the_partial_and_keeps_every_object(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(payload(48 * MiB, seed=9))
    with ext4_filesystem(tmp_path, 32, name="small") as mount_point:
        store = FileObjectStore(
            mount_point / "s", chunk_size=MiB, fsync_interval=4 * MiB
        ).create_directories()
        kept = store.put(io.BytesIO(payload(4 * MiB, seed=1)))
        free_before = store.free_bytes()
        with big.open("rb") as source, pytest.raises(DiskFullError) as caught:
            store.put(source, resume_key="big")
        message = str(caught.value)
        assert str(mount_point / "s") in message
        assert "bytes free" in message
        assert "ENOSPC" in message or "EDQUOT" in message
        assert files_under(mount_point / "s" / "partial") == []
        assert store.free_bytes() >= free_before - 64 * KiB
        assert store.verify_object(kept.blake3, kept.sha256, kept.size) == []
        with big.open("rb") as source, pytest.raises(DiskFullError, match="announced size"):
            store.put(source, expected_size=48 * MiB)
        assert files_under(mount_point / "s" / "partial") == []
        unseal_tree(mount_point)


WRITER = """
import sys
from pathlib import Path
from store.objects import FileObjectStore, MiB
store = FileObjectStore(Path(sys.argv[1]), chunk_size=256 * 1024, fsync_interval=MiB).create_directories()
store.put(sys.stdin.buffer, resume_key=sys.argv[2])
"""


def durable_offset(partial_dir: Path) -> int:
    for sidecar in partial_dir.glob("*.json"):
        with contextlib.suppress(ValueError, OSError):
            return int(json.loads(sidecar.read_text())["durable"])
    return 0


def test_a_put_killed_with_sigkill_resumes_from_its_sidecar(ext4: Path, tmp_path: Path) -> None:
    data = payload(64 * MiB, seed=3)
    source_file = tmp_path / "camera.mp4"
    source_file.write_bytes(data)
    root = ext4 / "s"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), "ZFY0001:A.MP4"], stdin=subprocess.PIPE, cwd=REPO
    )
    try:
        assert writer.stdin is not None
        writer.stdin.write(data[: 12 * MiB])  # a slow camera: the rest never comes
        writer.stdin.flush()
        deadline = time.monotonic() + 30
        while durable_offset(root / "partial") < 4 * MiB and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(writer.pid, signal.SIGKILL)
        assert writer.wait(timeout=30) == -signal.SIGKILL
    finally:
        if writer.poll() is None:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
        with contextlib.suppress(BrokenPipeError):
            if writer.stdin is not None:
                writer.stdin.close()
    durable = durable_offset(root / "partial")
    assert durable >= 4 * MiB
    # A kill inside the sidecar's durable write leaves its temp file: plant one, so it is always there.
    (sidecar,) = (root / "partial").glob("*.json")
    (sidecar.parent / f".{sidecar.name}.0123456789abcdef.tmp").write_bytes(b'{"key": "ZFY0001:A.MP4", "du')

    store = FileObjectStore(root, chunk_size=256 * KiB, fsync_interval=MiB).create_directories()
    with source_file.open("rb") as source:
        result = store.put(source, resume_key="ZFY0001:A.MP4")
    assert result.resumed_from == durable
    assert result.blake3 == blake3.blake3(data).hexdigest()
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert files_under(root / "objects") == [result.path]
    assert files_under(root / "partial") == []
    assert store.verify_object(result.blake3, result.sha256, len(data)) == []


def test_reconcile_removes_unknown_partials_and_temp_files(ext4: Path) -> None:
    store = FileObjectStore(ext4 / "s", chunk_size=256 * KiB, fsync_interval=MiB).create_directories()
    data = payload(3 * MiB)
    for key in ("keep", "gone"):
        with pytest.raises(OSError, match="camera unplugged"):
            store.put(camera(data, fail_after=2 * MiB), resume_key=key)
    partial = ext4 / "s" / "partial"
    kept_files = files_under(partial)
    stray = [partial / "anon-0123.part", partial / ".k-x.json.tmp-abcdef", partial / "k-orphan.part"]
    for path in stray:
        path.write_bytes(b"left by a crash")
    outcome = store.reconcile({"keep"})
    assert outcome.kept_keys == ("keep",)
    assert outcome.removed_keys == ("gone",)
    assert set(outcome.removed_paths) >= set(stray)
    remaining = files_under(partial)
    assert len(remaining) == 2
    assert set(remaining) < set(kept_files)
    assert store.put(io.BytesIO(data), resume_key="keep").resumed_from == 2 * MiB


def test_expiry_goes_by_the_last_write_and_never_takes_a_partial_being_written(ext4: Path) -> None:
    store = FileObjectStore(ext4 / "s", chunk_size=256 * KiB, fsync_interval=MiB).create_directories()
    data = payload(3 * MiB, seed=9)
    for key in ("old", "recent"):
        with pytest.raises(OSError, match="camera unplugged"):
            store.put(cast(BinaryIO, io.BufferedReader(UnpluggedCamera(data, 2 * MiB))), resume_key=key)
    now = datetime.now(UTC)
    week_ago = (now - timedelta(days=7)).timestamp()
    for path in (ext4 / "s" / "partial").glob("k-old-*"):
        os.utime(path, (week_ago, week_ago))  # the camera has not been back for a week
    (expired,) = store.expire_partials(now - timedelta(days=3), lambda _partial: None)
    assert expired.key == "old"
    assert expired.written_at == datetime.fromtimestamp(week_ago, UTC)
    assert sorted(p.name.split("-")[1] for p in (ext4 / "s" / "partial").iterdir()) == ["recent", "recent"]

    during: list[list[str]] = []

    def expire_mid_copy(done: int) -> None:
        if done >= MiB and not during:  # this put holds the partial: a far cutoff must still skip it
            expired_now = store.expire_partials(now + timedelta(days=1), lambda _partial: None)
            during.append([partial.key for partial in expired_now])

    result = store.put(io.BytesIO(data), resume_key="recent", progress=expire_mid_copy)
    assert during == [[]]
    assert result.resumed_from >= MiB
    assert result.blake3 == blake3.blake3(data).hexdigest()


def test_verify_and_scrub_find_what_a_root_attacker_did(ext4: Path) -> None:
    store = FileObjectStore(ext4 / "s").create_directories()
    results = [store.put(io.BytesIO(payload(MiB + n, seed=n))) for n in range(5)]
    flipped, deleted, unsealed, unflagged, sound = results
    flip_byte(flipped.path, 12345)
    chattr("-i", deleted.path)
    deleted.path.unlink()
    chattr("-i", unsealed.path)
    unsealed.path.chmod(0o644)
    chattr("-i", unflagged.path)  # mode still 0444, but the attribute is gone

    calls: list[tuple[int, int, int]] = []

    def progress(done: int, total: int, done_bytes: int) -> None:
        calls.append((done, total, done_bytes))

    entries = [ExpectedObject(r.blake3, r.sha256, r.size) for r in results]
    problems = store.scrub(entries, progress)
    found: dict[str, set[ProblemKind]] = {}
    for problem in problems:
        found.setdefault(problem.blake3, set()).add(problem.kind)
    assert found == {
        flipped.blake3: {ProblemKind.BLAKE3_MISMATCH, ProblemKind.SHA256_MISMATCH},
        deleted.blake3: {ProblemKind.MISSING},
        unsealed.blake3: {ProblemKind.NOT_SEALED},
        unflagged.blake3: {ProblemKind.NOT_SEALED},
    }
    assert sound.blake3 not in found
    assert [c[:2] for c in calls] == [
        (
            n,
            5,
        )
        for n in range(1, 6)
    ]
    assert calls[-1][2] == sum(r.size for r in results)


def test_remove_lifts_the_seal_and_unlinks(ext4: Path) -> None:
    store = FileObjectStore(ext4 / "s").create_directories()
    result = store.put(io.BytesIO(payload(MiB)))
    store.remove(result.blake3)
    with pytest.raises(OSError) as caught:
        result.path.lstat()
    assert caught.value.errno == errno.ENOENT
    assert files_under(ext4 / "s") == []
