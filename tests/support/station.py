"""A station opened the way the daemon opens it (state directory, SQLite catalog, file store, signing
key), all inside a test's own directory."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ingestd.config import Config
from ingestd.services import Services
from tests.support.objectstore import unseal_tree


@contextlib.contextmanager
def open_station(base: Path, **sections: Any) -> Iterator[Services]:
    """Services over `base/state` and `base/store`, with any further config `sections`; closed, and the
    sealed objects and append-only files under `base` unsealed, at the end."""
    config = Config.model_validate(
        {
            "daemon": {"state_dir": str(base / "state")},
            "catalog": {"url": f"sqlite:///{base / 'state' / 'catalog.db'}"},
            "store": {"root": str(base / "store")},
            **sections,
        }
    )
    services = Services.open(config)
    try:
        yield services
    finally:
        services.close()
        unseal_tree(base)
