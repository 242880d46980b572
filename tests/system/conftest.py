"""Fixtures for system tests: a daemon harness, simulated cameras and real OS users, each torn down by
its own id."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import fresh_database_url
from tests.support.loopdev import require_root_tools
from tests.support.objectstore import unseal_tree
from tests.support.osusers import OsUsers, can_manage_users
from tests.system.harness import Daemon, SimulatedCamera


@pytest.fixture
def daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Daemon]:
    """The daemon on a SQLite catalog; a test that parametrises it indirectly with BACKENDS runs once per
    catalog backend, PostgreSQL on a fresh database of the test server."""
    backend = getattr(request, "param", "sqlite")
    url = None if backend == "sqlite" else fresh_database_url(backend, request, tmp_path)
    harness = Daemon(base=tmp_path / "station", database_url=url)
    try:
        yield harness
    finally:
        harness.close()
        unseal_tree(harness.base)  # immutable objects and the append-only checkpoint file


@pytest.fixture
def block_daemon(tmp_path: Path) -> Iterator[Daemon]:
    """The daemon on real kernel uevents, for cameras docked as loop images."""
    require_root_tools("mkfs.ext4", "debugfs")
    harness = Daemon(base=tmp_path / "station", udev=True)
    try:
        yield harness
    finally:
        harness.close()
        unseal_tree(harness.base)


@pytest.fixture
def make_camera(tmp_path: Path) -> Iterator[Callable[..., SimulatedCamera]]:
    made: list[SimulatedCamera] = []

    def make(serial: str, **options: Any) -> SimulatedCamera:
        camera = SimulatedCamera(base=tmp_path / "cameras", serial=serial, **options)
        camera.start()
        made.append(camera)
        return camera

    try:
        yield make
    finally:
        for camera in made:
            camera.close()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp is 0700): the socket and a config copy."""
    path = Path(tempfile.mkdtemp(prefix="ingestd-ctl-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def os_users() -> Iterator[OsUsers]:
    reason = can_manage_users()
    if reason is not None:
        pytest.skip(reason)
    users = OsUsers()
    try:
        yield users
    finally:
        users.remove()
