"""Reading a stored object wherever it is: the local store, or the vault once it was evicted.

Guarantees:
- An evicted object is read from the vault version the replicator confirmed (its recorded version id),
  so a newer version put under the same key by someone with the station's credentials, or a delete
  marker, changes nothing; its size and both digests are checked as it is read, and a mismatch (or the
  object missing from the vault) is an integrity error (exit 3) raised before the reader sees the end.
- `open_object` streams (copy, export: they hash what they write and discard the whole delivery on any
  error); `open_spooled` first writes the bytes to an unlinked temporary file and verifies them to the
  end, for a caller that hands out a file descriptor (a viewing), so nothing partial is ever handed out.
- Stream-back never puts the object back in the local store: that would undo the eviction and fill
  the disk it freed; the vault's locked copy is the archive.
- A local copy that vanished because eviction removed it meanwhile is read from the vault too.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from ingestd import replication
from ingestd.config import ConfigError, VaultConfig
from ingestd.errors import IngestdError
from ingestd.exit_codes import ExitCode
from ingestd.services import Services
from store.errors import ObjectMissing
from store.models import ReplicationItem, StoredObject
from store.vault import Vault, VaultIntegrityError, VaultObjectMissingError, object_key

MiB = 1024 * 1024


@dataclass(frozen=True)
class VaultCopy:
    """An evicted object: what its bytes must be, and the vault version that holds them."""

    blake3: str
    sha256: str
    size: int
    version_id: str | None


def evicted_copy(db: Session, blake3: str) -> VaultCopy | None:
    """The vault copy of `blake3` when its local copy was evicted, else None."""
    row = db.execute(
        select(StoredObject, ReplicationItem.version_id)
        .outerjoin(ReplicationItem, replication.OBJECT_ITEM)
        .where(StoredObject.blake3 == blake3)
    ).first()
    if row is None or row[0].evicted_at is None:
        return None
    stored: StoredObject = row[0]
    return VaultCopy(stored.blake3, stored.sha256, stored.size, row[1])


def vault_of(services: Services) -> Vault:
    """The station's vault client (the daemon's own, else one made from `[vault]`)."""
    if services.vault is None:
        if services.config.vault.unset_keys():
            raise ConfigError(
                path="[vault]",
                detail="an evicted recording is read back from the vault, but the vault is not configured "
                f"(set {', '.join(services.config.vault.unset_keys())})",
            )
        services.vault = Vault(services.config.vault.settings("[vault]"))
    return services.vault


def _chunks(vault: Vault, copy: VaultCopy) -> Iterator[bytes]:
    try:
        yield from vault.stream(
            copy.blake3, sha256_hex=copy.sha256, size=copy.size, version_id=copy.version_id or None
        )
    except VaultObjectMissingError:
        # The catalog evicted it because the vault held it: its absence there is lost evidence.
        raise VaultIntegrityError(
            bucket=vault.settings.bucket,
            endpoint=vault.settings.endpoint,
            key=object_key(copy.blake3),
            detail=f"the evicted object (version {copy.version_id or '-'}) is not in the vault",
        ) from None


class VaultReader(io.RawIOBase):
    """A read-only file over a vault stream; the read that reaches the end raises on a mismatch."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]  # io's buffer protocol
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        super().close()


def _local_or_evicted(services: Services, blake3: str) -> BinaryIO | VaultCopy:
    with services.catalog.transaction() as db:
        copy = evicted_copy(db, blake3)
    if copy is not None:
        return copy
    try:
        return services.store.open(blake3)
    except ObjectMissing:
        with services.catalog.transaction() as db:
            copy = evicted_copy(db, blake3)  # evicted between the two reads
        if copy is None:
            raise
        return copy


def open_object(services: Services, blake3: str) -> BinaryIO:
    """The object's bytes: its local file, or a verifying stream from the vault when it was evicted."""
    found = _local_or_evicted(services, blake3)
    if not isinstance(found, VaultCopy):
        return found
    return io.BufferedReader(VaultReader(_chunks(vault_of(services), found)), buffer_size=4 * MiB)


class SpoolRefusedError(IngestdError):
    """A viewing of an evicted recording would spool past its budget or the state directory's reserve."""

    template = "viewing refused: {detail}"
    exit_code = ExitCode.SPOOL_REFUSED
    wire_code = "spool-refused"


class _Spooling:
    """The bytes this process is spooling from the vault now; the check and the space's allocation are
    one step under the lock, so concurrent viewings cannot each see the same free space."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes = 0

    @contextlib.contextmanager
    def space(self, spool: BinaryIO, size: int, settings: VaultConfig, spool_dir: Path) -> Iterator[None]:
        budget, reserve = settings.stream_back_spool_mib, settings.stream_back_reserve_mib
        with self._lock:
            if self._bytes + size > budget * MiB:
                raise SpoolRefusedError(
                    detail=f"spooling {size} bytes from the vault while {self._bytes} are being spooled "
                    f"would pass vault.stream_back_spool_mib ({budget} MiB); try again later"
                )
            free = shutil.disk_usage(spool_dir).free
            if free - size < reserve * MiB:
                raise SpoolRefusedError(
                    detail=f"spooling {size} bytes from the vault would leave {spool_dir}'s filesystem "
                    f"{free - size} bytes free, under vault.stream_back_reserve_mib ({reserve} MiB)"
                )
            if size:
                try:
                    os.posix_fallocate(spool.fileno(), 0, size)
                except OSError as error:
                    raise SpoolRefusedError(
                        detail=f"cannot reserve {size} bytes in {spool_dir}: {error.strerror or error}"
                    ) from None
            self._bytes += size
        try:
            yield
        finally:
            with self._lock:
                self._bytes -= size


_spooling = _Spooling()


def open_spooled(services: Services, blake3: str, spool_dir: Path) -> BinaryIO:
    """Like `open_object`, but an evicted object is first read whole into an unlinked temporary file in
    `spool_dir` and verified, so the file returned is complete and proven (a caller passes its fd on).
    Refused (`SpoolRefusedError`) past `vault.stream_back_spool_mib` or the reserve of free space."""
    found = _local_or_evicted(services, blake3)
    if not isinstance(found, VaultCopy):
        return found
    with (
        tempfile.TemporaryFile(dir=spool_dir) as spool,
        _spooling.space(spool, found.size, services.config.vault, spool_dir),
    ):
        for chunk in _chunks(vault_of(services), found):
            spool.write(chunk)
        spool.flush()
        # Handed out read-only, like a stored object: reopened through /proc, the file has no name.
        return os.fdopen(os.open(f"/proc/self/fd/{spool.fileno()}", os.O_RDONLY | os.O_CLOEXEC), "rb")
