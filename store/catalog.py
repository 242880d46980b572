"""Opening the catalog database with the settings evidence needs, on SQLite or PostgreSQL."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from store.errors import StoreError

SQLITE_BUSY_TIMEOUT_MS = 10_000


class CatalogError(StoreError):
    """The catalog database could not be opened or used."""

    template = "catalog {url}: {detail}"
    exit_code = 31
    wire_code = "catalog"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets ingestctl read while the daemon writes; FULL sync makes each commit durable, which the
    # wipe-after-proof invariant relies on; foreign keys are off by default in SQLite.
    # Autocommit at the driver level hands BEGIN to us (see _begin_immediate).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _sqlite_reader_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # A read-only connection sets nothing that writes: the journal mode is the writer's to choose.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _begin_immediate(connection: Connection) -> None:
    # A deferred transaction that reads first cannot later upgrade to a write in WAL mode once another
    # writer committed (SQLITE_BUSY_SNAPSHOT, no retry). Taking the write lock up front makes writers
    # queue on busy_timeout instead.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _begin_deferred(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN")


def create_catalog_engine(url: str, *, read_only: bool = False, create: bool = True) -> Engine:
    """An engine for `url`; SQLite files get WAL, busy_timeout, foreign keys and, when `create`, their
    directory. Without `create` a missing SQLite file is an error, so a reader never makes a catalog.
    `read_only` opens a SQLite file with mode=ro, setting nothing that writes."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            if create:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            elif not Path(database).is_file():
                raise CatalogError(
                    url=parsed.render_as_string(hide_password=True),
                    detail="no catalog database there; the station has not been set up "
                    "(start ingestd or run `ingestd migrate`)",
                )
        if read_only and database and database != ":memory:":
            # SQLite's own read-only open (mode=ro): no write reaches the file, whoever the caller is.
            parsed = parsed.set(database=f"file:{quote(database)}", query={"mode": "ro", "uri": "true"})
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_reader_pragmas if read_only else _sqlite_pragmas)
        event.listen(engine, "begin", _begin_deferred if read_only else _begin_immediate)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        # Default to psycopg 3, which is what we install.
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, pool_pre_ping=True)


@dataclass
class Catalog:
    """The engine and a session factory; sessions expire nothing on commit so rows stay readable.

    On a writable SQLite file, this process's transactions also take `writers` in turn: a thread that
    waits on SQLite's own lock polls it with sleeps of up to 100 ms, so with many docks committing one
    was seen to wait seconds while others took the lock. Python's lock wakes a waiter at once. Another
    process still queues on busy_timeout; a thread that waits longer than that goes to SQLite anyway,
    which then decides as before."""

    engine: Engine
    sessions: sessionmaker[Session]
    writers: threading.RLock | None = None

    @classmethod
    def open(cls, url: str, *, read_only: bool = False, create: bool = True) -> Catalog:
        """Open `url`. Readers pass read_only so they never queue behind the daemon's writes; a reader
        never creates a catalog (read_only implies not `create`)."""
        engine = create_catalog_engine(url, read_only=read_only, create=create and not read_only)
        writers = threading.RLock() if engine.dialect.name == "sqlite" and not read_only else None
        return cls(engine, sessionmaker(engine, expire_on_commit=False), writers)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: committed on success, rolled back on any error, always closed."""
        turn = self.writers is not None and self.writers.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        try:
            with self.sessions.begin() as db:
                yield db
        finally:
            if turn and self.writers is not None:
                self.writers.release()

    def close(self) -> None:
        self.engine.dispose()
