"""The object-store contract, run against every adapter: files on a real ext4 loop mount (root only: the
immutable attribute), files in a plain directory (any user), and memory."""

from __future__ import annotations

import hashlib
import inspect
import io
import itertools
import os
import pwd
import shutil
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, cast
from xml.etree import ElementTree

import blake3
import pytest
from structlog.testing import capture_logs

from store.errors import InvalidDigestError, ObjectMissing, ResumeMismatch, SourceSizeError
from store.objects import (
    ExpectedObject,
    FileObjectStore,
    MemoryObjectStore,
    MiB,
    ObjectStore,
    PartialCopy,
    ProblemKind,
    Seal,
    is_immutable,
)
from tests.support.loopdev import ext4_filesystem, require_root_tools
from tests.support.objectstore import UnpluggedCamera, unseal_tree
from tests.support.osusers import OsUsers, can_manage_users, run_python_as

KiB = 1024
REPO = Path(__file__).resolve().parents[2]
_roots = itertools.count(1)


@pytest.fixture(scope="module")
def ext4_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    require_root_tools("mkfs.ext4", "chattr")
    with ext4_filesystem(tmp_path_factory.mktemp("contract"), 256) as mount_point:
        yield mount_point
        unseal_tree(mount_point)


@pytest.fixture(params=["file-ext4", "file-dir", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """Small chunks and fsync intervals, so a few MiB exercise many chunks and several durable points."""
    if request.param == "memory":
        return MemoryObjectStore(chunk_size=256 * KiB, fsync_interval=MiB)
    if request.param == "file-dir":  # sealed 0444 only, unless the process may set the attribute here
        return FileObjectStore(
            tmp_path / "store", chunk_size=256 * KiB, fsync_interval=MiB
        ).create_directories()
    mount: Path = request.getfixturevalue("ext4_mount")
    return FileObjectStore(
        mount / f"store-{next(_roots)}", chunk_size=256 * KiB, fsync_interval=MiB
    ).create_directories()


def payload(size: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"evidence-{seed}".encode()).digest(size)


def reader(data: bytes) -> BinaryIO:
    return io.BytesIO(data)


def camera(data: bytes, fail_after: int) -> BinaryIO:
    return cast(BinaryIO, io.BufferedReader(UnpluggedCamera(data, fail_after)))


def test_put_returns_both_digests_and_the_content_address(store: ObjectStore) -> None:
    data = payload(3 * MiB + 17)
    result = store.put(reader(data))
    expected_blake3 = blake3.blake3(data).hexdigest()
    assert result.blake3 == expected_blake3
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.size == len(data)
    assert result.path.parts[-4:] == ("objects", expected_blake3[:2], expected_blake3[2:4], expected_blake3)
    assert result.path == store.path_for(expected_blake3)
    assert not result.deduplicated
    assert result.resumed_from == 0
    assert result.read_back_verified
    assert store.exists(expected_blake3)
    with store.open(expected_blake3) as stored:
        assert stored.read() == data


def test_an_empty_source_is_a_valid_object(store: ObjectStore) -> None:
    result = store.put(reader(b""))
    assert (result.blake3, result.size) == (blake3.blake3(b"").hexdigest(), 0)
    assert store.verify_object(result.blake3, result.sha256, 0) == []


def test_identical_content_is_stored_once(store: ObjectStore) -> None:
    data = payload(MiB + 5)
    first = store.put(reader(data))
    second = store.put(reader(data))
    assert not first.deduplicated
    assert second.deduplicated
    assert (second.blake3, second.sha256, second.path) == (first.blake3, first.sha256, first.path)
    assert store.verify_object(first.blake3, first.sha256, first.size) == []


def test_progress_counts_up_to_the_size(store: ObjectStore) -> None:
    data = payload(2 * MiB + 3)
    seen: list[int] = []
    store.put(reader(data), progress=seen.append)
    assert seen == sorted(seen)
    assert len(seen) >= 8
    assert seen[-1] == len(data)


def test_an_interrupted_copy_resumes_from_its_durable_offset(store: ObjectStore) -> None:
    data = payload(6 * MiB)
    with pytest.raises(OSError, match="camera unplugged"):
        store.put(camera(data, fail_after=3 * MiB + 100 * KiB), resume_key="ZFY0001:A.MP4")
    result = store.put(reader(data), resume_key="ZFY0001:A.MP4")
    assert 0 < result.resumed_from <= 3 * MiB + 100 * KiB
    assert result.blake3 == blake3.blake3(data).hexdigest()
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert store.verify_object(result.blake3, result.sha256, len(data)) == []
    assert store.reconcile(set()).removed_keys == ()  # the finished put left no partial behind


class Unplugged(Exception):  # noqa: N818 - an event raised by the caller's progress callback
    pass


def test_a_copy_stopped_by_its_progress_callback_keeps_its_partial_for_resume(store: ObjectStore) -> None:
    """The daemon stops a copy from the progress callback when the camera is undocked."""
    data = payload(6 * MiB, seed=7)

    def unplug_after_4_mib(done: int) -> None:
        if done >= 4 * MiB:
            raise Unplugged

    with pytest.raises(Unplugged):
        store.put(reader(data), resume_key="ZFY0002:B.MP4", progress=unplug_after_4_mib)
    result = store.put(reader(data), resume_key="ZFY0002:B.MP4")
    assert MiB <= result.resumed_from <= 4 * MiB
    assert result.blake3 == blake3.blake3(data).hexdigest()
    assert store.verify_object(result.blake3, result.sha256, len(data)) == []


def test_a_resume_from_a_spliced_source_copies_it_from_zero(store: ObjectStore) -> None:
    """Same key, size and stamp, other bytes only just before the stop (the last durable block, where a
    camera that reused the name would differ first): not the same source."""
    first = payload(6 * MiB, seed=3)
    stopped_at = 3 * MiB + 100 * KiB
    with pytest.raises(OSError, match="camera unplugged"):
        store.put(camera(first, fail_after=stopped_at), resume_key="ZFY0003:C.MP4", source_stamp="s1")
    spliced = bytearray(first)
    spliced[stopped_at - 300 * KiB : stopped_at] = bytes(300 * KiB)  # covers every adapter's last block
    with capture_logs() as logs:
        result = store.put(reader(bytes(spliced)), resume_key="ZFY0003:C.MP4", source_stamp="s1")
    assert result.resumed_from == 0
    assert result.blake3 == blake3.blake3(spliced).hexdigest()
    assert any(entry["event"].startswith("resume refused") for entry in logs)


def test_a_resume_of_a_source_with_another_stamp_copies_it_from_zero(store: ObjectStore) -> None:
    data = payload(4 * MiB, seed=4)
    with pytest.raises(OSError, match="camera unplugged"):
        store.put(camera(data, fail_after=3 * MiB), resume_key="ZFY0004:D.MP4", source_stamp="size:mtime-1")
    result = store.put(reader(data), resume_key="ZFY0004:D.MP4", source_stamp="size:mtime-2")
    assert result.resumed_from == 0
    assert result.blake3 == blake3.blake3(data).hexdigest()
    assert store.put(reader(data), resume_key="ZFY0004:D.MP4", source_stamp="size:mtime-2").deduplicated


def test_digest_hashes_a_source_as_put_does_and_stores_nothing(store: ObjectStore) -> None:
    data = payload(3 * MiB, seed=5)
    seen: list[int] = []
    expected = store.digest(reader(data), progress=seen.append)
    assert expected == ExpectedObject(
        blake3.blake3(data).hexdigest(), hashlib.sha256(data).hexdigest(), len(data)
    )
    assert seen[-1] == len(data)
    assert not store.exists(expected.blake3)
    with pytest.raises(OSError, match="camera unplugged"):
        store.digest(camera(data, fail_after=MiB))


def test_a_shorter_source_cannot_resume_and_its_partial_is_discarded(store: ObjectStore) -> None:
    data = payload(4 * MiB)
    with pytest.raises(OSError, match="camera unplugged"):
        store.put(camera(data, fail_after=3 * MiB), resume_key="k")
    with pytest.raises(ResumeMismatch, match="already stored"):
        store.put(reader(data[:MiB]), resume_key="k")
    result = store.put(reader(data), resume_key="k")
    assert result.resumed_from == 0
    assert result.blake3 == blake3.blake3(data).hexdigest()


def test_an_unseekable_source_restarts_from_zero(store: ObjectStore) -> None:
    data = payload(3 * MiB)
    with pytest.raises(OSError, match="camera unplugged"):
        store.put(camera(data, fail_after=2 * MiB), resume_key="pipe")
    read_end, write_end = os.pipe()

    def feed() -> None:
        with os.fdopen(write_end, "wb") as sink:
            sink.write(data)

    feeder = threading.Thread(target=feed)
    feeder.start()
    with os.fdopen(read_end, "rb") as pipe:
        result = store.put(pipe, resume_key="pipe")
    feeder.join()
    assert result.resumed_from == 0
    assert result.sha256 == hashlib.sha256(data).hexdigest()


def test_reconcile_keeps_only_the_partials_it_is_told_to(store: ObjectStore) -> None:
    data = payload(3 * MiB)
    for key in ("keep-me", "drop-me"):
        with pytest.raises(OSError, match="camera unplugged"):
            store.put(camera(data, fail_after=2 * MiB), resume_key=key)
    outcome = store.reconcile(lambda key: key == "keep-me")
    assert outcome.kept_keys == ("keep-me",)
    assert outcome.removed_keys == ("drop-me",)
    assert store.put(reader(data), resume_key="drop-me").resumed_from == 0
    assert store.put(reader(data), resume_key="keep-me").deduplicated
    assert store.reconcile({"anything"}).kept_keys == ()


def test_partials_written_before_the_cutoff_expire_after_the_callback_and_newer_ones_stay(
    store: ObjectStore,
) -> None:
    data = payload(3 * MiB, seed=4)
    with pytest.raises(OSError, match="camera unplugged"):
        store.put(camera(data, fail_after=2 * MiB), resume_key="ZFY0003:C.MP4")
    now = datetime.now(UTC)
    seen: list[PartialCopy] = []
    assert store.expire_partials(now - timedelta(hours=1), seen.append) == []
    assert seen == []
    (expired,) = store.expire_partials(now + timedelta(hours=1), seen.append)
    assert seen == [expired]
    assert expired.key == "ZFY0003:C.MP4"
    assert MiB <= expired.durable <= 2 * MiB
    assert expired.written_at <= datetime.now(UTC)
    assert store.put(reader(data), resume_key="ZFY0003:C.MP4").resumed_from == 0  # nothing left to resume


def test_a_partial_whose_callback_fails_is_kept_for_resume(store: ObjectStore) -> None:
    data = payload(3 * MiB, seed=5)
    with pytest.raises(OSError, match="camera unplugged"):
        store.put(camera(data, fail_after=2 * MiB), resume_key="ZFY0004:D.MP4")

    def audit_fails(_partial: PartialCopy) -> None:
        raise RuntimeError("catalog unavailable")

    with pytest.raises(RuntimeError, match="catalog unavailable"):
        store.expire_partials(datetime.now(UTC) + timedelta(hours=1), audit_fails)
    assert store.put(reader(data), resume_key="ZFY0004:D.MP4").resumed_from >= MiB


def test_a_source_of_the_wrong_size_stores_nothing(store: ObjectStore) -> None:
    data = payload(MiB)
    with pytest.raises(SourceSizeError, match="expected"):
        store.put(reader(data), expected_size=len(data) + 1)
    assert not store.exists(blake3.blake3(data).hexdigest())


def test_remove_is_the_way_out_and_then_the_object_is_missing(store: ObjectStore) -> None:
    data = payload(MiB)
    result = store.put(reader(data))
    store.remove(result.blake3)
    assert not store.exists(result.blake3)
    with pytest.raises(ObjectMissing):
        store.open(result.blake3)
    with pytest.raises(ObjectMissing):
        store.remove(result.blake3)
    problems = store.verify_object(result.blake3, result.sha256, result.size)
    assert [problem.kind for problem in problems] == [ProblemKind.MISSING]


def test_verify_reports_wrong_expectations_and_scrub_reports_progress(store: ObjectStore) -> None:
    first = store.put(reader(payload(MiB, seed=1)))
    second = store.put(reader(payload(2 * MiB, seed=2)))
    assert store.verify_object(first.blake3, first.sha256, first.size) == []
    kinds = {p.kind for p in store.verify_object(first.blake3, second.sha256, first.size + 1)}
    assert kinds == {ProblemKind.SHA256_MISMATCH, ProblemKind.SIZE_MISMATCH}
    calls: list[tuple[int, int, int]] = []
    entries = [ExpectedObject(r.blake3, r.sha256, r.size) for r in (first, second)]

    def record(done: int, total: int, done_bytes: int) -> None:
        calls.append((done, total, done_bytes))

    assert store.scrub(entries, record) == []
    assert calls == [(1, 2, MiB), (2, 2, 3 * MiB)]


def test_digests_that_are_not_hex_never_become_paths(store: ObjectStore) -> None:
    with pytest.raises(InvalidDigestError):
        store.path_for("../../etc/passwd")
    with pytest.raises(ValueError, match="not a BLAKE3"):
        store.exists("A" * 64)


def test_a_stored_object_is_sealed_as_put_reports(store: ObjectStore) -> None:
    result = store.put(reader(payload(MiB, seed=8)))
    assert result.seal in {Seal.IMMUTABLE, Seal.READ_ONLY}
    if isinstance(store, FileObjectStore):
        assert result.path.stat().st_mode & 0o7777 == 0o444
        assert is_immutable(result.path) == (result.seal is Seal.IMMUTABLE)
    assert store.verify_object(result.blake3, result.sha256, result.size) == []


def contract_cases() -> set[str]:
    """The names of this module's contract tests: those that take the `store` fixture."""
    return {
        name
        for name, value in globals().items()
        if name.startswith("test_") and "store" in inspect.signature(value).parameters
    }


@pytest.mark.root  # to create the OS user and its mount namespace
def test_without_root_only_the_ext4_cases_skip_and_the_file_adapter_passes_in_a_directory() -> None:
    """Run this module's file-adapter cases as a real OS user with no capabilities and read its report."""
    reason = can_manage_users()
    if reason is not None:
        pytest.skip(reason)
    for tool in ("setpriv", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    users = OsUsers()
    workdir = Path(tempfile.mkdtemp(prefix="ingestd-contract-"))  # the user cannot enter root's tmp_path
    try:
        user = users.user("st", [])
        os.chown(workdir, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        report = workdir / "report.xml"
        done = run_python_as(
            user,
            *("-m", "pytest", __file__, "-k", "file-dir or file-ext4", "-q", "-p", "no:cacheprovider"),
            *(f"--basetemp={workdir / 'tmp'}", f"--junitxml={report}"),
            cwd=REPO,
            env={"PYTHONDONTWRITEBYTECODE": "1"},
        )
        assert done.returncode == 0, done.stdout + done.stderr
        outcomes: dict[str, str] = {}
        written = ElementTree.parse(report)  # noqa: S314 - written just now by our own child pytest
        for case in written.iter("testcase"):
            found = [child.tag for child in case if child.tag in {"skipped", "failure", "error"}]
            outcomes[case.attrib["name"]] = found[0] if found else "passed"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        users.remove()
    expected = contract_cases()
    assert expected
    in_a_directory = {name: outcomes.get(f"{name}[file-dir]") for name in expected}
    on_ext4 = {name: outcomes.get(f"{name}[file-ext4]") for name in expected}
    assert in_a_directory == dict.fromkeys(expected, "passed")
    assert on_ext4 == dict.fromkeys(expected, "skipped")  # the loop mount needs root


@pytest.fixture(autouse=True)
def _unseal_tmp_path(tmp_path: Path) -> Iterator[None]:
    yield
    unseal_tree(tmp_path)
