"""Fixtures shared by every test layer: catalogs on real SQLite files and a real PostgreSQL server, and a
real single-node Ceph for the vault."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from store.catalog import Catalog
from store.models import Base
from tests.support.ceph import ceph_cluster
from tests.support.objectstore import unseal_tree
from tests.support.postgres import PostgresServer, start_server

__all__ = ["ceph_cluster"]  # a session fixture: the vault tests' single-node Ceph

BACKENDS = ["sqlite", "postgresql"]
_database_names = itertools.count(1)


@pytest.fixture(autouse=True)
def _unsealed_tmp_path(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, clear the immutable and append-only attributes its own `tmp_path` was left with
    (sealed objects, the checkpoint file), so pytest can delete old temp dirs."""
    yield
    used = request.node.funcargs.get("tmp_path") if hasattr(request.node, "funcargs") else None
    if isinstance(used, Path):
        unseal_tree(used)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


def fresh_database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on `backend`: a new SQLite file, or a new database on the test server."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"t{next(_database_names)}"
    admin = create_engine(server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return server.url(name)


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL to an empty database, once per backend."""
    return fresh_database_url(request.param, request, tmp_path)


@pytest.fixture(params=BACKENDS)
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Catalog]:
    """A catalog with the current schema, on each backend, empty for every test."""
    url = fresh_database_url(request.param, request, tmp_path)
    opened = Catalog.open(url)
    Base.metadata.create_all(opened.engine)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def sqlite_catalog(tmp_path: Path) -> Iterator[Catalog]:
    """A catalog on a real SQLite file only, for tests about SQLite itself or too slow for both."""
    opened = Catalog.open(f"sqlite:///{tmp_path / 'catalog.db'}")
    Base.metadata.create_all(opened.engine)
    try:
        yield opened
    finally:
        opened.close()
