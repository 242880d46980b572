"""The long-lived things a daemon, a one-shot import or ingestctl open from the configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from drivers.registry import DriverRegistry
from ingestd import schema
from ingestd.config import Config
from ingestd.flagging import FlagNotifier
from ingestd.objects_in_use import ObjectsInUse
from store.audit import AuditLog, chain_end
from store.catalog import Catalog
from store.checkpoints import CheckpointFile
from store.models import StoredObject
from store.objects import FileObjectStore, ObjectStore
from store.objects.pipeline import chunk_within
from store.signing import Signer
from store.vault import Vault

MIB = 1024 * 1024
CHECKPOINT_FILE = "audit-checkpoints.jsonl"


def checkpoint_path(config: Config) -> Path:
    return config.daemon.state_dir / CHECKPOINT_FILE


def signed_history(catalog: Catalog, checkpoints: Path) -> str | None:
    """What an existing signing key has signed, in words, or None on a station with no audit history."""
    with catalog.transaction() as db:
        events = chain_end(db)
    if events:
        return f"the audit chain already has {events} event(s)"
    if any(True for _ in CheckpointFile(checkpoints, set_append_only=False).lines()):
        return f"{checkpoints} already holds signed checkpoints"
    return None


def holds_stored_objects(catalog: Catalog) -> bool:
    """Whether the catalog has ever recorded an object in the store (purged ones count: their station
    was set up)."""
    with catalog.transaction() as db:
        return db.scalar(select(StoredObject.blake3).limit(1)) is not None


def open_store(config: Config) -> FileObjectStore:
    """The configured object store; opening it touches nothing on disk."""
    return FileObjectStore(
        config.store.root,
        read_back=config.store.read_back,
        # Every dock copying at once holds a ring of buffers: their share of copy_memory_mib bounds the
        # daemon's memory with 25 docks (measured: 4 MiB buffers put it at 400 MiB).
        chunk_size=chunk_within(
            config.store.copy_memory_mib * MIB, config.ingest.max_concurrent, config.store.chunk_mib * MIB
        ),
        fsync_interval=config.store.fsync_interval_mib * MIB,
        idle_rings=config.ingest.max_concurrent,  # the rings within copy_memory_mib; more are unmapped
    )


@dataclass
class StationReader:
    """What `ingestctl verify` opens: the catalog read-only (nothing can write it) and the store. No
    signing key and no camera rule, so read access to the station is all it needs (an auditor)."""

    config: Config
    catalog: Catalog
    store: ObjectStore

    @classmethod
    def open(cls, config: Config) -> StationReader:
        catalog = Catalog.open(config.catalog.url, read_only=True)
        try:
            schema.require_current(catalog.engine)
        except BaseException:
            catalog.close()
            raise
        return cls(config=config, catalog=catalog, store=open_store(config))

    def close(self) -> None:
        self.catalog.close()


@dataclass
class Services:
    config: Config
    catalog: Catalog
    store: ObjectStore
    audit: AuditLog
    registry: DriverRegistry
    # Runs `[notify] command` for new flags on a thread of its own, started on the first flag.
    flag_notifier: FlagNotifier = field(init=False)
    # What the daemon watches for cameras, as it started its sources (udev's chosen event source and
    # why, the watched folders), for `status`; None outside the daemon.
    detection: dict[str, Any] | None = None
    # The vault client for reading evicted objects back (the daemon's replicator's; else made on first use).
    vault: Vault | None = None
    # Objects a copy, export or viewing is reading now: eviction leaves them alone.
    in_use: ObjectsInUse = field(default_factory=ObjectsInUse)

    @classmethod
    def open(cls, config: Config, *, migrate: bool = True, cameras: bool = True) -> Services:
        """Open everything. The daemon and imports set the station up (state directory, catalog schema,
        signing key); every other caller (`migrate=False`) opens an existing station and creates nothing.
        With `cameras=False` no camera rule is loaded, so no camera password file is read. A reader that
        needs neither the signing key nor to write opens a `StationReader` instead."""
        if migrate:
            config.daemon.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        catalog = Catalog.open(config.catalog.url, create=migrate)
        try:
            if migrate:
                schema.upgrade(catalog.engine)
            else:
                schema.require_current(catalog.engine)
            store = open_store(config)
            if migrate:
                # Only a fresh station creates the layout. Once the catalog records stored objects, a
                # missing directory means the store's disk is not mounted: creating it on the bare mount
                # point would give an empty store that later reads as "objects absent".
                if holds_stored_objects(catalog):
                    store.require_directories()
                else:
                    store.create_directories()
                signer = Signer.load_or_create(
                    config.daemon.state_dir, history=lambda: signed_history(catalog, checkpoint_path(config))
                )
            else:
                signer = Signer.load(config.daemon.state_dir)
            audit = AuditLog(signer, checkpoint_path(config), config.audit.checkpoint_every)
            registry = DriverRegistry(config.camera_rules() if cameras else [])
        except BaseException:
            catalog.close()
            raise
        return cls(config=config, catalog=catalog, store=store, audit=audit, registry=registry)

    def __post_init__(self) -> None:
        self.flag_notifier = FlagNotifier(self.config.notify)

    def close(self) -> None:
        """Let queued notifications run (for a bounded time), then close the catalog."""
        self.flag_notifier.stop()
        self.catalog.close()
