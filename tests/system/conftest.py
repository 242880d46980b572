"""Fixtures for system tests: a daemon harness and simulated cameras, each torn down by its own pid."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.objectstore import unseal_tree
from tests.system.harness import Daemon, SimulatedCamera


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    harness = Daemon(base=tmp_path / "station")
    try:
        yield harness
    finally:
        harness.close()
        unseal_tree(harness.base)  # immutable objects and the append-only checkpoint file


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
