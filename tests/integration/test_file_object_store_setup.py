"""Opening a file store does no I/O: only set-up creates its directories, and a store used before it is
set up fails with one clear error instead of writing somewhere (an unmounted disk's mount point)."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ingestd.services import Services
from store.errors import StoreNotSetUpError
from store.objects import FileObjectStore
from tests.support.station import open_station

DIGEST = "ab" * 32


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry below `root` with its inode and mtime: a probe file created and removed shows too."""
    entries = [root, *root.rglob("*")]
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in entries}


def test_a_store_over_a_missing_root_creates_nothing_and_fails_clearly_when_used(tmp_path: Path) -> None:
    root = tmp_path / "unmounted" / "store"
    store = FileObjectStore(root)
    uses: dict[str, Callable[[], object]] = {
        "put": lambda: store.put(io.BytesIO(b"evidence")),
        "open": lambda: store.open(DIGEST),
        "exists": lambda: store.exists(DIGEST),
        "verify_object": lambda: store.verify_object(DIGEST, DIGEST, 1),
        "remove": lambda: store.remove(DIGEST),
        "reconcile": lambda: store.reconcile(set()),
        "expire_partials": lambda: store.expire_partials(datetime.now(UTC), lambda _partial: None),
    }
    for name, use in uses.items():
        with pytest.raises(StoreNotSetUpError) as caught:
            use()
        assert str(caught.value) == (
            f"object store {root} is not set up: {root / 'objects'} does not exist "
            "(is its filesystem mounted?)"
        ), name
        assert caught.value.exit_code == 44
    assert not (tmp_path / "unmounted").exists()


def test_opening_an_existing_store_writes_nothing_and_create_sets_one_up(tmp_path: Path) -> None:
    root = tmp_path / "store"
    stored = FileObjectStore(root).create_directories().put(io.BytesIO(b"evidence"))
    assert sorted(p.name for p in root.iterdir()) == ["objects", "partial", "quarantine"]
    before = snapshot(root)
    reopened = FileObjectStore(root)
    assert reopened.exists(stored.blake3)
    with reopened.open(stored.blake3) as handle:
        assert handle.read() == b"evidence"
    assert reopened.free_bytes() > 0
    assert snapshot(root) == before  # no directory made, no seal probe written
    FileObjectStore(root).create_directories()  # set-up again changes nothing that exists
    assert snapshot(root) == before


def test_only_the_set_up_path_of_services_creates_the_store(tmp_path: Path) -> None:
    with open_station(tmp_path, store={"root": str(tmp_path / "disk" / "store")}) as daemon:
        assert daemon.store.put(io.BytesIO(b"evidence")).size == len(b"evidence")
        config = daemon.config
    unmounted = config.store.model_copy(update={"root": tmp_path / "unmounted" / "store"})
    reader = Services.open(config.model_copy(update={"store": unmounted}), migrate=False)
    try:
        with pytest.raises(StoreNotSetUpError, match="is not set up"):
            reader.store.put(io.BytesIO(b"evidence"))
    finally:
        reader.close()
    assert not (tmp_path / "unmounted").exists()
