"""Signed checkpoints of the audit chain, kept as JSON lines in an append-only file outside the database.

A checkpoint says "the chain whose first event hashes to `genesis` had, at event `seq`, hash `hash`",
signed with the station key. Someone who can rewrite the database but not the key cannot make a
rewritten chain agree with earlier checkpoints, and `genesis` tells a checkpoint of another catalog
(a state directory paired with the wrong database) from a chain that lost its tail. Lines written
before `genesis` existed carry no such field and stay valid.
Each line is written with one O_APPEND write and fsynced; the file gets the filesystem append-only
attribute where the kernel allows it, and whether it did is recorded on the `CheckpointFile`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from store.durable import fsync_dir
from store.objects.sealing import FS_APPEND_FL, get_inode_flags, set_inode_flags
from store.signing import Signer, canonical_json
from store.times import utc

_log = structlog.get_logger(__name__)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_FIELDS = frozenset({"seq", "hash", "at", "key_id", "signature"})
_FIELDS_WITH_GENESIS = _FIELDS | {"genesis"}


def format_utc(at: datetime) -> str:
    """ISO-8601 UTC with microseconds and "Z", one fixed form so hashes never depend on formatting."""
    return utc(at, "at").strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    at: str  # format_utc form, kept as signed
    key_id: str
    signature: str  # hex Ed25519 signature over canonical_json(body())
    genesis: str | None = None  # hash of the chain's event 1; None only in lines from older releases

    def body(self) -> dict[str, Any]:
        body = {"seq": self.seq, "hash": self.hash, "at": self.at, "key_id": self.key_id}
        if self.genesis is not None:
            body["genesis"] = self.genesis
        return body

    def signed_bytes(self) -> bytes:
        return canonical_json(self.body())

    def to_line(self) -> bytes:
        return canonical_json({**self.body(), "signature": self.signature}) + b"\n"

    @classmethod
    def sign(
        cls,
        signer: Signer,
        *,
        seq: int,
        hash: str,  # noqa: A002 - the field's name
        at: datetime,
        genesis: str | None,
    ) -> Checkpoint:
        unsigned = cls(
            seq=seq, hash=hash, at=format_utc(at), key_id=signer.key_id, signature="", genesis=genesis
        )
        return cls(**{**unsigned.body(), "signature": signer.sign(unsigned.signed_bytes()).hex()})

    @classmethod
    def parse(cls, line: str) -> Checkpoint:
        """One line of the file; ValueError says what is wrong with it."""
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"not JSON ({error.msg})") from error
        if not isinstance(record, dict) or set(record) not in (_FIELDS, _FIELDS_WITH_GENESIS):
            raise ValueError(f"expected an object with exactly {sorted(_FIELDS)} (and genesis)")
        seq, digest, at, kid, signature = (record[k] for k in ("seq", "hash", "at", "key_id", "signature"))
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ValueError(f"seq {seq!r} is not a positive integer")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise ValueError("hash is not 64 lowercase hex digits")
        if not isinstance(at, str) or not isinstance(kid, str):
            raise ValueError("at and key_id must be strings")  # noqa: TRY004 - a bad line, reported as such
        if not isinstance(signature, str) or not _HEX128.fullmatch(signature):
            raise ValueError("signature is not 128 lowercase hex digits")
        genesis = record.get("genesis")
        if "genesis" in record and (not isinstance(genesis, str) or not _HEX64.fullmatch(genesis)):
            raise ValueError("genesis is not 64 lowercase hex digits")
        return cls(seq=seq, hash=digest, at=at, key_id=kid, signature=signature, genesis=genesis)


@dataclass(frozen=True)
class CheckpointLine:
    """A line as read: the checkpoint, or why it could not be read."""

    number: int
    checkpoint: Checkpoint | None
    error: str | None


class CheckpointFile:
    """The append-only JSON-lines file of checkpoints.

    `append_only` is None until the first write, then True if the filesystem append-only attribute is
    set and False if the kernel refused it (no CAP_LINUX_IMMUTABLE, or a filesystem without it); the
    refusal is kept in `append_only_error`. `set_append_only=False` skips the attempt (tests).
    """

    def __init__(self, path: Path, *, set_append_only: bool = True) -> None:
        self.path = path
        self.set_append_only = set_append_only
        self.append_only: bool | None = None
        self.append_only_error: str | None = None

    def append(self, checkpoint: Checkpoint) -> None:
        """Append one line durably: a single O_APPEND write, then fsync (and the directory if new)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            if self.set_append_only:
                self._ensure_append_only(fd)
            line = checkpoint.to_line()
            written = os.write(fd, line)
            if written != len(line):
                # A short write would leave a torn line that verification reports; say so now too.
                raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.path.parent)

    def _ensure_append_only(self, fd: int) -> None:
        try:
            flags = get_inode_flags(fd)
            if not flags & FS_APPEND_FL:
                set_inode_flags(fd, flags | FS_APPEND_FL)
        except OSError as error:
            if self.append_only is not False:
                _log.warning(
                    "audit_checkpoint_file_not_append_only", path=str(self.path), reason=error.strerror
                )
            self.append_only = False
            self.append_only_error = error.strerror or str(error)
        else:
            self.append_only = True
            self.append_only_error = None

    def lines(self) -> Iterator[CheckpointLine]:
        """Every non-empty line in file order; a missing file has none. OSError if unreadable."""
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return
        with handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                if not raw.endswith(b"\n"):
                    yield CheckpointLine(number, None, "torn last line (no newline): an interrupted write")
                    continue
                try:
                    yield CheckpointLine(number, Checkpoint.parse(raw.decode("utf-8")), None)
                except UnicodeDecodeError:
                    yield CheckpointLine(number, None, "not UTF-8")
                except ValueError as error:
                    yield CheckpointLine(number, None, str(error))

    def last_seq(self, key_id: str) -> int:
        """The highest seq checkpointed by `key_id` (0 if none), to know when the next one is due."""
        best = 0
        for line in self.lines():
            if line.checkpoint is not None and line.checkpoint.key_id == key_id:
                best = max(best, line.checkpoint.seq)
        return best
