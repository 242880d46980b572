"""Nothing leaves the camera until its copy is proven: the ingest session with a real store on ext4.

A read-back failure is produced for real: after the store's fsync, one byte of the copy is flipped in
the loop device's backing image, underneath ext4 (tests/support/objectstore.rot_below_filesystem).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import mmap
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, cast

import blake3
import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from drivers.base import OriginalFile
from drivers.scan import scan_volume
from drivers.simulator.volume import build_volume
from ingestd.config import Config
from ingestd.importer import run_import
from ingestd.policies.retention import RetentionRules
from ingestd.progress import DockProgress
from ingestd.purge import give_notices, purge
from ingestd.services import Services
from ingestd.session import IngestSettings, SessionSummary, source_key, source_stamp
from store.models import DockVisit, Flag, Recording, SessionState, StoredObject
from store.objects import FileObjectStore
from store.types import utcnow
from tests.support import records as seed
from tests.support.loopdev import ext4_filesystem, require_root_tools
from tests.support.objectstore import UnpluggedCamera, rot_below_filesystem, unseal_tree
from tests.support.records import CLERK, audit_events

KIB = 1024
MIB = 1024 * KIB


def camera(data: bytes, fail_after: int) -> BinaryIO:
    return cast(BinaryIO, io.BufferedReader(UnpluggedCamera(data, fail_after)))


@pytest.fixture
def store_fs(tmp_path: Path) -> Iterator[Path]:
    require_root_tools("mkfs.ext4", "chattr")
    with ext4_filesystem(tmp_path, 96, name="store") as mount_point:
        yield mount_point
        unseal_tree(mount_point)


def camera_volume(tmp_path: Path) -> dict[Path, str]:
    volume = tmp_path / "card"
    files = build_volume(
        volume,
        device_serial="ZFY8001",
        officer_name="张三",
        count=3,
        size_bytes=2 * MIB,
        start=datetime.now(UTC) - timedelta(hours=3),
        seed=8,
        hostile=False,
    )
    return {path: blake3.blake3(path.read_bytes()).hexdigest() for path in files}


def services_with(tmp_path: Path, store: FileObjectStore) -> Services:
    config = Config.model_validate(
        {
            "daemon": {"state_dir": str(tmp_path / "state")},
            "catalog": {"url": f"sqlite:///{tmp_path / 'state' / 'catalog.db'}"},
            "store": {"root": str(store.root)},
        }
    )
    services = Services.open(config)
    return dataclasses.replace(services, store=store)


def import_card(services: Services, card: Path, *, delete: bool = True) -> SessionSummary:
    return run_import(
        services,
        card,
        device_id="ZFY8001",
        officer_no=None,  # the card's identity file names its officer
        settings=IngestSettings(delete_after_ingest=delete),
        clock=utcnow,
    )


def rewrite_in_place(path: Path) -> bytes:
    """Other bytes under the same name, size and mtime (the metadata an earlier dock keyed on)."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-4096:] = bytes(byte ^ 0x5A for byte in data[-4096:])
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    return bytes(data)


def rot_the_second_copy(image: Path) -> Callable[[Path], None]:
    rot = rot_below_filesystem(image)
    seen: list[Path] = []

    def maybe_rot(partial: Path) -> None:
        seen.append(partial)
        if len(seen) == 2:
            rot(partial)

    return maybe_rot


def test_a_failed_read_back_leaves_every_original_on_the_camera(tmp_path: Path, store_fs: Path) -> None:
    originals = camera_volume(tmp_path)
    store = FileObjectStore(
        store_fs / "store", on_synced=rot_the_second_copy(tmp_path / "store.img")
    ).create_directories()
    services = services_with(tmp_path, store)
    try:
        with capture_logs() as logs:
            import_card(services, tmp_path / "card")
        with services.catalog.transaction() as db:
            (dock_session,) = db.scalars(select(DockVisit)).all()
            assert dock_session.state is SessionState.FAILED
            assert dock_session.failure_reason is not None
            assert dock_session.failure_reason.startswith("integrity error")
            assert len(db.scalars(select(Recording)).all()) == 1  # only the first, proven copy
    finally:
        services.close()
    assert any(entry["event"] == "integrity_error" and entry["log_level"] == "critical" for entry in logs)
    for path, digest in originals.items():  # every file still on the camera, unchanged
        assert blake3.blake3(path.read_bytes()).hexdigest() == digest


def test_without_read_back_nothing_is_deleted_because_nothing_is_proven(
    tmp_path: Path, store_fs: Path
) -> None:
    originals = camera_volume(tmp_path)
    services = services_with(
        tmp_path, FileObjectStore(store_fs / "store", read_back=False).create_directories()
    )
    try:
        import_card(services, tmp_path / "card")
        with services.catalog.transaction() as db:
            assert len(db.scalars(select(Recording)).all()) == 3
    finally:
        services.close()
    assert all(path.exists() for path in originals)


def held_in_memory(held: list[tuple[BinaryIO, mmap.mmap]]) -> Callable[[Path], None]:
    """Another process holding a file mapped: its pages stay in the page cache, which no drop evicts."""

    def hold(path: Path) -> None:
        handle = path.open("rb")
        mapping = mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ)
        assert sum(mapping[::4096]) >= 0  # every page read in
        held.append((handle, mapping))

    return hold


def release(held: list[tuple[BinaryIO, mmap.mmap]]) -> None:
    for handle, mapping in held:
        mapping.close()
        handle.close()
    held.clear()


def reasons_flagged(services: Services) -> list[str]:
    """Each failed-file flag's reason, up to its parenthesis, in the order raised."""
    with services.catalog.transaction() as db:
        flags = db.scalars(select(Flag).order_by(Flag.id)).all()
        return [str(flag.details["reason"]).split(" (", 1)[0] for flag in flags]


def test_a_read_back_that_could_only_read_memory_deletes_nothing(tmp_path: Path, store_fs: Path) -> None:
    """A store whose read-back goes through the page cache (a chunk size O_DIRECT cannot use) drops a
    copy's pages before reading them back. Where some stay (held mapped), the read-back reads memory and
    proves nothing: the file stays on the camera with a flag saying why. So does a re-dock while the
    stored copy is held; once nothing holds it, the re-dock proves it from the medium and deletes."""
    originals = camera_volume(tmp_path)
    held: list[tuple[BinaryIO, mmap.mmap]] = []
    store = FileObjectStore(store_fs / "store", chunk_size=100_000, on_synced=held_in_memory(held))
    services = services_with(tmp_path, store.create_directories())
    try:
        try:
            summary = import_card(services, tmp_path / "card")
        finally:
            release(held)
        assert (summary.files, summary.errors) == (3, 3)
        assert all(path.exists() for path in originals)
        assert reasons_flagged(services) == ["stored, but not re-read from the medium"] * 3

        stored = [store.path_for(digest) for digest in originals.values()]
        for path in stored:
            held_in_memory(held)(path)
        try:
            again = import_card(services, tmp_path / "card")
        finally:
            release(held)
        assert again.errors == 3
        assert all(path.exists() for path in originals)
        assert reasons_flagged(services)[3:] == ["its stored copy was not re-read from the medium"] * 3

        import_card(services, tmp_path / "card")
        assert not any(path.exists() for path in originals)
    finally:
        services.close()


def test_with_read_back_proven_originals_are_deleted(tmp_path: Path, store_fs: Path) -> None:
    originals = camera_volume(tmp_path)
    services = services_with(tmp_path, FileObjectStore(store_fs / "store").create_directories())
    try:
        import_card(services, tmp_path / "card")
    finally:
        services.close()
    assert not any(path.exists() for path in originals)


def test_the_summary_tells_the_store_passes_from_the_session_s_own_time(
    tmp_path: Path, store_fs: Path
) -> None:
    """Of a session's seconds, those in the store's copy and read-back passes of its files are summed
    apart, so a slow dock shows whether the camera, the store's disk or the session held it."""
    camera_volume(tmp_path)
    services = services_with(tmp_path, FileObjectStore(store_fs / "store").create_directories())
    try:
        summary = import_card(services, tmp_path / "card")
    finally:
        services.close()
    assert summary.files == 3
    assert summary.copy_seconds > 0
    assert summary.read_back_seconds > 0
    assert summary.copy_seconds + summary.read_back_seconds < summary.seconds


def test_a_file_rewritten_in_place_is_stored_before_it_is_deleted(tmp_path: Path, store_fs: Path) -> None:
    """Same path, size and time as a stored recording is no proof: the new bytes are read, stored as a
    new recording, and only then deleted; the untouched files are re-read and match their old copies."""
    originals = camera_volume(tmp_path)
    store = FileObjectStore(store_fs / "store").create_directories()
    services = services_with(tmp_path, store)
    try:
        import_card(services, tmp_path / "card", delete=False)
        changed = sorted(originals)[1]
        new_bytes = rewrite_in_place(changed)
        new_digest = blake3.blake3(new_bytes).hexdigest()
        import_card(services, tmp_path / "card")
        with services.catalog.transaction() as db:
            recordings = db.scalars(select(Recording).order_by(Recording.id)).all()
            assert sorted(r.blake3 for r in recordings) == sorted([*originals.values(), new_digest])
            (old, new) = [r for r in recordings if r.original_path.endswith(changed.name)]
            assert (old.blake3, new.blake3) == (originals[changed], new_digest)
            assert (old.size, old.recorded_at) == (new.size, new.recorded_at)
            assert new.source_key != old.source_key
            (ingest,) = [
                e for e in audit_events(db, "recording.ingest") if e.subject == f"recording:{new.id}"
            ]
            assert ingest.details["same_source_as"] == [f"recording:{old.id}"]
            reverified = [
                e.subject for e in audit_events(db, "recording.delete-original") if e.outcome == "deleted"
            ]
            assert sorted(reverified) == sorted(f"recording:{r.id}" for r in recordings if r.id != old.id)
        assert store.verify_object(new_digest, hashlib.sha256(new_bytes).hexdigest(), len(new_bytes)) == []
    finally:
        services.close()
    assert not any(path.exists() for path in originals)


def test_a_file_replaced_after_its_copy_stays_and_every_deletion_is_audited(
    tmp_path: Path, store_fs: Path
) -> None:
    """Between the proof and the unlink the camera file is swapped for other bytes of the same size and
    mtime: the unlink is refused because the inode is not the one read, and the refusal is on record."""
    originals = camera_volume(tmp_path)
    replaced: list[Path] = []
    store_box: list[FileObjectStore] = []

    def swap_a_stored_file(_partial: Path) -> None:
        stored = [path for path, digest in originals.items() if store_box[0].exists(digest)]
        if len(stored) == 2 and not replaced:
            target = stored[0]
            before = target.stat()
            swapped = target.with_name(".swap")
            swapped.write_bytes(bytes(before.st_size))
            os.utime(swapped, ns=(before.st_atime_ns, before.st_mtime_ns))
            swapped.replace(target)
            replaced.append(target)

    store = FileObjectStore(store_fs / "store", on_synced=swap_a_stored_file).create_directories()
    store_box.append(store)
    services = services_with(tmp_path, store)
    try:
        import_card(services, tmp_path / "card")
        with services.catalog.transaction() as db:
            intent, closed = audit_events(db, "camera.delete-originals")
            deletions = audit_events(db, "recording.delete-original")
            recordings = {r.id: r for r in db.scalars(select(Recording)).all()}
    finally:
        services.close()
    (target,) = replaced
    assert target.read_bytes() == bytes(target.stat().st_size)  # the swapped-in bytes are still there
    assert [path for path in originals if path.exists()] == [target]
    assert intent.outcome == "started"
    assert intent.details["files"] == 3
    assert closed.outcome == "done"
    assert closed.subject == intent.subject
    assert {k: closed.details[k] for k in ("deleted", "refused", "failed")} == {
        "deleted": 2,
        "refused": 1,
        "failed": 0,
    }
    assert sorted(event.outcome for event in deletions) == ["deleted", "deleted", "refused"]
    (refused,) = [event for event in deletions if event.outcome == "refused"]
    assert refused.details["path"].endswith(target.name)
    assert refused.details["reason"].startswith("not the file that was copied: inode")
    recording = recordings[int(refused.subject.removeprefix("recording:"))]
    assert recording.blake3 == originals[target] == refused.details["blake3"]


def test_a_resumed_copy_spliced_from_another_source_is_copied_again_whole(
    tmp_path: Path, store_fs: Path
) -> None:
    """A partial copy of a camera file, then the file changes where the resume check does not sample
    (same size and mtime): the object stored equals the camera file, and only then is it deleted."""
    originals = camera_volume(tmp_path)
    store = FileObjectStore(
        store_fs / "store", chunk_size=256 * KIB, fsync_interval=256 * KIB
    ).create_directories()
    card = tmp_path / "card"
    (item, *_) = scan_volume(card).recordings
    target = Path(os.fsdecode(item.raw_path))
    info = target.stat()
    first = target.read_bytes()
    stamp = source_stamp(OriginalFile.of(target, info))
    with pytest.raises(OSError, match="camera unplugged"):
        store.put(
            camera(first, fail_after=3 * MIB // 2),
            resume_key=f"ZFY8001-{source_key(item, card)}",
            source_stamp=stamp,
        )
    spliced = bytearray(first)
    spliced[100 * KIB : 101 * KIB] = bytes(KIB)  # between the first and the second sampled window
    target.write_bytes(spliced)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
    services = services_with(tmp_path, store)
    try:
        with capture_logs() as logs:
            import_card(services, card)
        with services.catalog.transaction() as db:
            digests = {r.original_path: r.blake3 for r in db.scalars(select(Recording)).all()}
    finally:
        services.close()
    assert digests[item.name] == blake3.blake3(spliced).hexdigest()
    assert sorted(digests.values()) == sorted(
        [*(d for p, d in originals.items() if p != target), digests[item.name]]
    )
    assert any(entry["event"] == "resumed_copy_differs" for entry in logs)
    assert not any(path.exists() for path in originals)


class PurgeAfterTheCopy(DockProgress):
    """Runs the real retention purge right after the store put of one file and before its catalog
    commit: the window in which a deduplicated put races the removal of the same object."""

    def __init__(self, services: Services, name: str, now: datetime) -> None:
        super().__init__()
        self.services, self.name, self.now = services, name, now
        self.removed: tuple[str, ...] = ()
        self._current: str | None = None

    def start_file(self, name: str) -> None:
        super().start_file(name)
        self._current = name

    def finish_file(self, size: int) -> None:
        super().finish_file(size)
        if self._current == self.name and not self.removed:
            services = self.services
            report = purge(
                services.catalog,
                services.store,
                services.audit,
                actor=CLERK,
                now=self.now,
                rules=PURGE_RULES,
                dry_run=False,
            )
            self.removed = report.removed_objects


PURGE_RULES = RetentionRules(routine_months=6, standard_years=3, notice_days=14)


def test_a_deduplicated_copy_that_races_the_purge_of_its_object_stores_the_bytes_again(
    tmp_path: Path, store_fs: Path
) -> None:
    """Another camera's expired recording holds the same bytes as a file on this card. The purge removes
    that object after the put deduplicated into it and before the commit: the commit must not bring a
    live row back onto missing bytes (nor may the camera file then go)."""
    originals = camera_volume(tmp_path)
    shared = sorted(originals)[0]
    store = FileObjectStore(store_fs / "store").create_directories()
    services = services_with(tmp_path, store)
    stored_long_ago = datetime(2025, 1, 10, tzinfo=UTC)
    try:
        with services.catalog.transaction() as db:
            officer = seed.officer(db, "000123", "李四")
            other = seed.camera(db, "ZFY0001", assigned=officer, first_seen_at=stored_long_ago)
            obj = seed.stored_object(db, shared.read_bytes(), stored_at=stored_long_ago, store=store)
            expired = seed.recording(
                db, other, obj, recorded_at=stored_long_ago, ingested_at=stored_long_ago
            ).id
        give_notices(
            services.catalog,
            services.audit,
            actor=CLERK,
            now=datetime(2025, 7, 1, tzinfo=UTC),
            rules=PURGE_RULES,
        )
        progress = PurgeAfterTheCopy(
            services, str(shared.relative_to(tmp_path / "card")), now=datetime(2025, 7, 20, tzinfo=UTC)
        )
        run_import(
            services,
            tmp_path / "card",
            device_id="ZFY8001",
            officer_no=None,
            settings=IngestSettings(),
            clock=utcnow,
            progress=progress,
        )
        assert progress.removed == (originals[shared],)  # the race happened
        with services.catalog.transaction() as db:
            live = db.scalars(select(Recording).where(Recording.purged_at.is_(None))).all()
            assert sorted(r.blake3 for r in live) == sorted(originals.values())
            assert db.get_one(Recording, expired).purged_at is not None
            for recording in live:
                obj_row = db.get_one(StoredObject, recording.blake3)
                assert obj_row.removed_at is None
                assert store.verify_object(obj_row.blake3, obj_row.sha256, obj_row.size) == []
    finally:
        services.close()
    assert not any(path.exists() for path in originals)
