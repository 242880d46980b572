"""Nothing leaves the camera until its copy is proven: the ingest session with a real store on ext4.

A read-back failure is produced for real: after the store's fsync, one byte of the copy is flipped in
the loop device's backing image, underneath ext4 (tests/support/objectstore.rot_below_filesystem).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import blake3
import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from drivers.simulator.volume import build_volume
from ingestd.config import Config
from ingestd.importer import run_import
from ingestd.services import Services
from ingestd.session import IngestSettings
from store.models import DockSession, Recording, SessionState
from store.objects import FileObjectStore
from store.types import utcnow
from tests.support.loopdev import ext4_filesystem, require_root_tools
from tests.support.objectstore import rot_below_filesystem, unseal_tree

MIB = 1024 * 1024


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


def import_card(services: Services, card: Path) -> None:
    run_import(
        services, card, device_id="ZFY8001", officer_no="000101", settings=IngestSettings(), clock=utcnow
    )


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
    store = FileObjectStore(store_fs / "store", on_synced=rot_the_second_copy(tmp_path / "store.img"))
    services = services_with(tmp_path, store)
    try:
        with capture_logs() as logs:
            import_card(services, tmp_path / "card")
        with services.catalog.transaction() as session:
            (dock_session,) = session.scalars(select(DockSession)).all()
            assert dock_session.state is SessionState.FAILED
            assert dock_session.failure_reason is not None
            assert dock_session.failure_reason.startswith("integrity error")
            assert len(session.scalars(select(Recording)).all()) == 1  # only the first, proven copy
    finally:
        services.close()
    assert any(entry["event"] == "integrity_error" and entry["log_level"] == "critical" for entry in logs)
    for path, digest in originals.items():  # every file still on the camera, unchanged
        assert blake3.blake3(path.read_bytes()).hexdigest() == digest


def test_without_read_back_nothing_is_deleted_because_nothing_is_proven(
    tmp_path: Path, store_fs: Path
) -> None:
    originals = camera_volume(tmp_path)
    services = services_with(tmp_path, FileObjectStore(store_fs / "store", read_back=False))
    try:
        import_card(services, tmp_path / "card")
        with services.catalog.transaction() as session:
            assert len(session.scalars(select(Recording)).all()) == 3
    finally:
        services.close()
    assert all(path.exists() for path in originals)


def test_with_read_back_proven_originals_are_deleted(tmp_path: Path, store_fs: Path) -> None:
    originals = camera_volume(tmp_path)
    services = services_with(tmp_path, FileObjectStore(store_fs / "store"))
    try:
        import_card(services, tmp_path / "card")
    finally:
        services.close()
    assert not any(path.exists() for path in originals)
