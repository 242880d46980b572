"""The tamper-evident audit chain: who did what, to which subject, when, with what outcome.

Guarantees:
- An event is written inside the caller's transaction, so it commits or rolls back with the change it
  records.
- Events form one chain, seq 1, 2, 3, ... with hash = BLAKE3(prev_hash bytes ‖ canonical JSON of every
  other field). Appenders in any thread or process are serialised by a row lock on `audit_head`, taken
  by the first statement of `append`, so the chain never forks (SQLite's write lock, PostgreSQL's row
  lock).
- Signed checkpoints (see `store.checkpoints`) are written only after a commit, from what was committed:
  automatically every `checkpoint_every` events, and by `anchor` whenever a unit of work has finished.
- `verify_chain` streams the whole chain, never stops at the first problem and names each kind.
"""

from __future__ import annotations

import enum
import json
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import blake3
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import (
    Connection,
    Select,
    Table,
    Text,
    cast,
    event,
    insert,
    inspect,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.types import NullType

from store.catalog import Catalog
from store.checkpoints import Checkpoint, CheckpointFile, format_utc
from store.crashpoints import Step, crash_point
from store.errors import StoreError
from store.models import AuditEvent, AuditHead, Base
from store.signing import Signer, canonical_json, keys_by_id, verify_signature
from store.times import utc
from store.types import utcnow

_log = structlog.get_logger(__name__)


def _table(model: type[Base]) -> Table:
    table = model.__table__
    if not isinstance(table, Table):  # pragma: no cover - declarative models always map a Table
        raise TypeError(f"{model.__name__} is not mapped to a table")
    return table


EVENTS = _table(AuditEvent)
HEAD = _table(AuditHead)

GENESIS_HASH = "0" * 64
HEAD_ID = 1
_PENDING = "store.audit.pending"  # Session.info key: events appended in the open transaction

# Every column but `hash`, in the order of the model; the hash covers exactly these.
HASHED_FIELDS = (
    "seq",
    "at",
    "actor_user",
    "actor_uid",
    "actor_role",
    "action",
    "subject",
    "outcome",
    "source",
    "details",
    "prev_hash",
)


class AuditError(StoreError):
    """An audit event could not be written or a checkpoint could not be taken."""

    template = "audit: {detail}"
    exit_code = 33


class Role(enum.StrEnum):
    ADMIN = "admin"
    CLERK = "clerk"
    APPROVER = "approver"
    AUDITOR = "auditor"
    VIEWER = "viewer"
    SYSTEM = "system"
    NONE = "none"  # a caller with no role, recorded as such when refused


@dataclass(frozen=True)
class Actor:
    """Who acted: the OS user (and uid when known), their role, and where the action came from."""

    user: str
    uid: int | None
    role: Role
    source: str  # "dock:<port>", "ctl:uid=1000", or a host name

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", Role(self.role))  # refuses an unknown role string

    @classmethod
    def system(cls, source: str) -> Actor:
        """The daemon itself, acting on a dock event."""
        return cls(user="ingestd", uid=None, role=Role.SYSTEM, source=source)


def event_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """BLAKE3(prev_hash as 32 bytes ‖ canonical JSON of `fields`), hex."""
    return blake3.blake3(bytes.fromhex(prev_hash) + canonical_json(dict(fields))).hexdigest()


def _hashed_form(values: Mapping[str, Any]) -> dict[str, Any]:
    form = {name: values[name] for name in HASHED_FIELDS}
    form["at"] = format_utc(values["at"])
    return form


def _normalise_details(details: Mapping[str, Any] | None) -> dict[str, Any]:
    # What is hashed must be exactly what the database gives back: round-trip through JSON now, so
    # tuples, int keys or a datetime cannot hash one way and read back another.
    try:
        normal = json.loads(canonical_json(dict(details or {})))
    except (TypeError, ValueError) as error:
        raise AuditError(detail=f"details are not plain JSON: {error}") from error
    if not isinstance(normal, dict):  # pragma: no cover - dict() above guarantees an object
        raise AuditError(detail="details must be a JSON object")
    return normal


_LIMITS = {"actor_user": 64, "actor_role": 24, "action": 64, "outcome": 16, "source": 255}


def _check_lengths(values: Mapping[str, Any]) -> None:
    # PostgreSQL would refuse an over-long value at flush, SQLite would keep it: refuse it on both,
    # and never truncate (a truncated subject or user changes the meaning of the record).
    for name, limit in _LIMITS.items():
        if len(values[name]) > limit:
            raise AuditError(detail=f"{name} is {len(values[name])} characters, at most {limit} fit")


def _lock_head(connection: Connection) -> tuple[int, str]:
    """Lock the head row (creating it on first use) and return the committed (seq, hash) it holds."""
    table = HEAD
    lock = update(table).where(table.c.id == HEAD_ID).values(seq=table.c.seq)
    if connection.execute(lock).rowcount == 0:
        _seed_head(connection)
        if connection.execute(lock).rowcount != 1:
            raise AuditError(detail="the audit_head row could not be created or locked")
    # A new statement: on PostgreSQL (READ COMMITTED) it sees the head committed by whoever held the lock.
    row = connection.execute(select(table.c.seq, table.c.hash).where(table.c.id == HEAD_ID)).one()
    return int(row.seq), str(row.hash)


def _seed_head(connection: Connection) -> None:
    # First append on this database: start the head at the last event (none: genesis). ON CONFLICT DO
    # NOTHING lets two first appenders race; the loser then queues on the winner's row lock.
    events = EVENTS
    last = connection.execute(
        select(events.c.seq, events.c.hash).order_by(events.c.seq.desc()).limit(1)
    ).first()
    values = {"id": HEAD_ID, "seq": last.seq if last else 0, "hash": last.hash if last else GENESIS_HASH}
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(postgresql.insert(HEAD).values(values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        connection.execute(sqlite.insert(HEAD).values(values).on_conflict_do_nothing())
    else:  # one appender at a time is all other backends are promised
        connection.execute(insert(HEAD).values(values))


class AuditLog:
    """Appends events to the chain and writes signed checkpoints of what has been committed."""

    def __init__(
        self,
        signer: Signer,
        checkpoint_path: Path,
        checkpoint_every: int = 1000,
        *,
        set_append_only: bool = True,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        self.signer = signer
        self.checkpoints = CheckpointFile(checkpoint_path, set_append_only=set_append_only)
        self.checkpoint_every = checkpoint_every
        self._clock = clock
        self._lock = threading.Lock()
        self._checkpointed_seq: int | None = None  # read lazily from the file
        self._genesis: str | None = None  # hash of event 1, once a commit has shown it
        self.last_checkpoint_error: str | None = None

    def append(
        self,
        session: Session,
        *,
        actor: Actor,
        action: str,
        subject: str,
        outcome: str = "ok",
        details: Mapping[str, Any] | None = None,
        at: datetime,
    ) -> AuditEvent:
        """Add one event to the chain inside `session`'s transaction; it commits or rolls back with it."""
        values: dict[str, Any] = {
            "at": utc(at, "at"),
            "actor_user": actor.user,
            "actor_uid": actor.uid,
            "actor_role": str(actor.role),
            "action": action,
            "subject": subject,
            "outcome": outcome,
            "source": actor.source,
            "details": _normalise_details(details),
        }
        _check_lengths(values)
        connection = session.connection()
        head_seq, head_hash = _lock_head(connection)  # first statement: serialises appenders
        values["seq"] = head_seq + 1
        values["prev_hash"] = head_hash
        values["hash"] = event_hash(head_hash, _hashed_form(values))
        genesis = self._genesis
        if genesis is None:
            genesis = values["hash"] if values["seq"] == 1 else _read_genesis(session)
        record = AuditEvent(**values)
        session.add(record)
        session.flush([record])
        head = HEAD
        connection.execute(
            update(head).where(head.c.id == HEAD_ID).values(seq=values["seq"], hash=values["hash"])
        )
        self._track(session, record, _Head(values["seq"], values["hash"], genesis))
        return record

    # --- checkpoints -------------------------------------------------------------------------------

    def _track(self, session: Session, record: AuditEvent, head: _Head) -> None:
        session.info.setdefault(_PENDING, []).append((self, record, head))
        if not event.contains(session, "after_commit", _after_commit):
            event.listen(session, "after_commit", _after_commit)
            event.listen(session, "after_transaction_end", _after_transaction_end)

    def _committed(self, head: _Head) -> None:
        """Called after a commit made event `head.seq` durable: checkpoint it if one is due."""
        with self._lock:
            if head.genesis is not None:
                self._genesis = head.genesis  # committed: event 1 of this catalog never changes
            try:
                if self._checkpointed_seq is None:
                    self._checkpointed_seq = self.checkpoints.last_seq(self.signer.key_id)
                if head.seq - self._checkpointed_seq >= self.checkpoint_every:
                    self._write(head)
            except OSError as error:
                # The commit has happened and must not be reported as failed; the next commit retries,
                # and verify_chain(checkpoint_every=...) shows an overdue checkpoint.
                self.last_checkpoint_error = str(error)
                _log.error("audit_checkpoint_failed", path=str(self.checkpoints.path), error=str(error))

    def _write(self, head: _Head) -> Checkpoint:
        checkpoint = Checkpoint.sign(
            self.signer, seq=head.seq, hash=head.hash, at=self._clock(), genesis=head.genesis
        )
        crash_point(Step.AUDIT_CHECKPOINT)
        self.checkpoints.append(checkpoint)
        self._checkpointed_seq = max(head.seq, self._checkpointed_seq or 0)
        self.last_checkpoint_error = None
        return checkpoint

    def _committed_head(self, target: Catalog | Session) -> _Head | None:
        if isinstance(target, Catalog):
            with target.transaction() as session:
                return _last_event(session)
        if target.in_transaction():
            # Its transaction may hold events that are not committed yet: a checkpoint must never sign them.
            raise AuditError(detail="checkpoint needs a session with no transaction open (commit first)")
        with target.begin():
            return _last_event(target)

    def checkpoint(self, target: Catalog | Session) -> Checkpoint | None:
        """Sign the last committed event now (None if the chain is empty). A session must be idle."""
        head = self._committed_head(target)
        if head is None:
            return None
        with self._lock:
            return self._write(head)

    def anchor(self, target: Catalog | Session) -> Checkpoint | None:
        """Sign the committed head unless a checkpoint already covers it; None if nothing was written.

        Called when a session or a mutating command has finished, on a timer and at start-up, so that
        deleting even the last event (and moving `audit_head` back) leaves the chain shorter than a
        signed checkpoint. Costs one indexed read, one signature and one fsynced line. A failure is
        logged and kept in `last_checkpoint_error`, never raised: the work it anchors is done and
        committed, and the next anchor (at the latest the timer's) covers it."""
        try:
            head = self._committed_head(target)
            if head is None:
                return None
            with self._lock:
                if self._checkpointed_seq is None:
                    self._checkpointed_seq = self.checkpoints.last_seq(self.signer.key_id)
                if head.seq <= self._checkpointed_seq:
                    return None
                return self._write(head)
        except (OSError, SQLAlchemyError) as error:
            self.last_checkpoint_error = str(error)
            _log.error("audit_checkpoint_failed", path=str(self.checkpoints.path), error=str(error))
            return None


@dataclass(frozen=True)
class _Head:
    """What a checkpoint signs: the event `seq`, its hash, and the hash of event 1 (None if missing)."""

    seq: int
    hash: str
    genesis: str | None


def _read_genesis(session: Session) -> str | None:
    events = EVENTS
    found = session.execute(select(events.c.hash).where(events.c.seq == 1)).scalar_one_or_none()
    return None if found is None else str(found)


def chain_end(session: Session) -> int:
    """The seq of the last event stored (0 for an empty chain)."""
    head = _last_event(session)
    return 0 if head is None else head.seq


def _last_event(session: Session) -> _Head | None:
    events = EVENTS
    row = session.execute(select(events.c.seq, events.c.hash).order_by(events.c.seq.desc()).limit(1)).first()
    return None if row is None else _Head(int(row.seq), str(row.hash), _read_genesis(session))


def _after_commit(session: Session) -> None:
    pending: list[tuple[AuditLog, AuditEvent, _Head]] = session.info.pop(_PENDING, [])
    latest: dict[AuditLog, _Head] = {}
    for log, record, head in pending:
        # An event added inside a savepoint that rolled back is no longer persistent: skip it.
        if inspect(record).persistent and (log not in latest or head.seq > latest[log].seq):
            latest[log] = head
    for log, head in latest.items():
        log._committed(head)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # The outermost transaction ended; after a commit `_after_commit` has already taken the list, so
    # whatever is left was rolled back. (A savepoint's end changes nothing: see `_after_commit`.)
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


# --- verification ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditProblem:
    """One thing wrong with the chain or its checkpoints.

    kind: "hash-mismatch" (a row was edited), "broken-link" (prev_hash is not the previous row's hash),
    "seq-gap" (rows missing in the middle or at the start), "tail-missing" (the chain ends before a
    signed checkpoint), "checkpoint-mismatch" (the chain differs from what a checkpoint signed: it was
    rewritten), "checkpoint-signature" (bad signature or unknown key), "checkpoint-file" (unreadable or
    garbled line), "checkpoint-missing" (too many events after the last valid checkpoint),
    "catalog-mismatch" (checkpoints signed for a chain with another first event: the state directory
    belongs to another catalog, or this chain was rewritten from its start),
    "head-mismatch" (audit_head disagrees with the rows), "row-unreadable" (a value cannot be decoded).
    """

    kind: str
    seq: int | None
    detail: str


class _Problems(list[AuditProblem]):
    def add(self, kind: str, seq: int | None, detail: str) -> None:
        self.append(AuditProblem(kind, seq, detail))


def _load_checkpoints(
    path: Path, public_keys: Mapping[str, Ed25519PublicKey], problems: _Problems
) -> dict[int, list[Checkpoint]]:
    """The checkpoints whose signature verifies, by seq; every other line becomes a problem."""
    valid: dict[int, list[Checkpoint]] = {}
    try:
        for line in CheckpointFile(path, set_append_only=False).lines():
            if line.checkpoint is None:
                problems.add("checkpoint-file", None, f"{path} line {line.number}: {line.error}")
                continue
            checkpoint = line.checkpoint
            key = public_keys.get(checkpoint.key_id)
            if key is None:
                problems.add(
                    "checkpoint-signature",
                    checkpoint.seq,
                    f"line {line.number}: unknown key {checkpoint.key_id}",
                )
            elif not verify_signature(key, bytes.fromhex(checkpoint.signature), checkpoint.signed_bytes()):
                problems.add(
                    "checkpoint-signature",
                    checkpoint.seq,
                    f"line {line.number}: signature does not verify",
                )
            else:
                valid.setdefault(checkpoint.seq, []).append(checkpoint)
    except OSError as error:
        problems.add("checkpoint-file", None, f"{path}: cannot read: {error}")
    return valid


def undecoded_events(batch_size: int = 1000) -> Select[Any]:
    """Every event in seq order, streamed, with `at` and `details` left undecoded: a reader calls
    `decode_event` on each row, so one unreadable value is a problem it reports, not a crash."""
    events = EVENTS
    columns = [c for c in events.c if c.name not in ("at", "details")]
    return (
        select(
            *columns,
            type_coerce(events.c.at, NullType()).label("at"),
            cast(events.c.details, Text).label("details"),
        )
        .order_by(events.c.seq)
        .execution_options(yield_per=batch_size)
    )


def decode_event(row: RowMapping) -> dict[str, Any]:
    """A row of `undecoded_events` with `at` (UTC) and `details` decoded; ValueError or TypeError if not."""
    values = dict(row)
    at = values["at"]
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    if not isinstance(at, datetime):
        raise TypeError(f"at is {type(at).__name__}")
    values["at"] = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    values["details"] = json.loads(values["details"]) if values["details"] is not None else None
    return values


def verify_chain(
    session: Session,
    *,
    checkpoint_path: Path,
    public_key: Ed25519PublicKey | Collection[Ed25519PublicKey],
    checkpoint_every: int | None = None,
    batch_size: int = 1000,
) -> list[AuditProblem]:
    """Every problem in the chain, its head and its checkpoints; an empty list means it verifies.

    Rows are streamed in seq order (`batch_size` at a time). Call it in a fresh transaction: checkpoints
    are read first, so each one signs a row the following reads can see. Pass `checkpoint_every` to
    also report a missing recent checkpoint (as after the checkpoint file was deleted or truncated).
    """
    problems = _Problems()
    checkpoints = _load_checkpoints(checkpoint_path, keys_by_id(public_key), problems)
    _set_aside_other_chains(checkpoints, _read_genesis(session), problems)
    head_table = HEAD
    head = session.execute(
        select(head_table.c.seq, head_table.c.hash).where(head_table.c.id == HEAD_ID)
    ).first()
    head_seq = None if head is None else int(head.seq)

    query = undecoded_events(batch_size)
    expected = 1
    prev_stored: str | None = GENESIS_HASH  # None: the previous row is missing, the link cannot be checked
    last: tuple[int, str] | None = None
    hash_at_head: str | None = None
    for row in session.execute(query).mappings():
        seq = int(row["seq"])
        if seq != expected:
            missing = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
            problems.add("seq-gap", expected, f"events {missing} are missing")
            prev_stored = None
        if prev_stored is not None and row["prev_hash"] != prev_stored:
            problems.add(
                "broken-link",
                seq,
                f"prev_hash {row['prev_hash']} is not the previous hash {prev_stored}",
            )
        try:
            recomputed = event_hash(row["prev_hash"], _hashed_form(decode_event(row)))
        except (ValueError, TypeError) as error:
            problems.add("row-unreadable", seq, f"cannot recompute the hash: {error}")
        else:
            if recomputed != row["hash"]:
                problems.add(
                    "hash-mismatch",
                    seq,
                    f"stored hash {row['hash']} but the content hashes to {recomputed}",
                )
        for checkpoint in checkpoints.get(seq, ()):
            if checkpoint.hash != row["hash"]:
                problems.add(
                    "checkpoint-mismatch",
                    seq,
                    f"checkpoint signed at {checkpoint.at} says {checkpoint.hash}, "
                    f"the chain has {row['hash']}",
                )
        if seq == head_seq:
            hash_at_head = row["hash"]
        prev_stored = row["hash"]
        last = (seq, row["hash"])
        expected = seq + 1

    last_seq = last[0] if last else 0
    _check_head(session, head, hash_at_head, last, problems)
    beyond = [seq for seq in checkpoints if seq > last_seq]
    if beyond:
        problems.add(
            "tail-missing",
            max(beyond),
            f"the chain ends at seq {last_seq} but a signed checkpoint covers seq {max(beyond)}",
        )
    if checkpoint_every is not None:
        covered = max(checkpoints, default=0)
        if last_seq - covered > checkpoint_every:
            problems.add(
                "checkpoint-missing",
                covered + 1,
                f"{last_seq - covered} events after seq {covered} have no valid checkpoint "
                f"(one is due every {checkpoint_every})",
            )
    return problems


def _set_aside_other_chains(
    checkpoints: dict[int, list[Checkpoint]], genesis: str | None, problems: _Problems
) -> None:
    """Remove the checkpoints that name another first event, reported as one problem per chain they
    name: compared seq by seq they would only say "tail missing" or "mismatch", which misleads."""
    others: dict[str, list[int]] = {}
    for seq, signed in list(checkpoints.items()):
        kept = [c for c in signed if c.genesis is None or c.genesis == genesis]
        for checkpoint in signed:
            if checkpoint.genesis is not None and checkpoint.genesis != genesis:
                others.setdefault(checkpoint.genesis, []).append(seq)
        if kept:
            checkpoints[seq] = kept
        else:
            del checkpoints[seq]
    if genesis is None:
        ours, or_else = "has no events", "every event of this one was deleted"
    else:
        ours, or_else = f"starts with an event hashed {genesis[:16]}…", "its chain was rewritten from event 1"
    for theirs, seqs in others.items():
        problems.add(
            "catalog-mismatch",
            None,
            f"{len(seqs)} signed checkpoint(s) up to seq {max(seqs)} are of a chain that starts with an "
            f"event hashed {theirs[:16]}…, but this catalog {ours}: the state directory belongs to "
            f"another catalog, or {or_else}",
        )


def _check_head(
    session: Session,
    head: Any,
    hash_at_head: str | None,
    last: tuple[int, str] | None,
    problems: _Problems,
) -> None:
    if head is None:
        if last is not None:
            problems.add("head-mismatch", None, f"no audit_head row, but events up to seq {last[0]}")
        return
    head_seq, head_hash = int(head.seq), str(head.hash)
    last_seq = last[0] if last else 0
    if head_seq > last_seq:
        problems.add(
            "head-mismatch",
            head_seq,
            f"audit_head is at seq {head_seq} but the chain ends at seq {last_seq}",
        )
    elif head_seq == 0:
        if head_hash != GENESIS_HASH:
            problems.add("head-mismatch", 0, "audit_head at seq 0 does not hold the genesis hash")
    elif hash_at_head is None:
        problems.add("head-mismatch", head_seq, f"audit_head names seq {head_seq}, which is missing")
    elif hash_at_head != head_hash:
        problems.add(
            "head-mismatch",
            head_seq,
            f"audit_head holds {head_hash}, the row at seq {head_seq} {hash_at_head}",
        )
    if last is not None and last_seq > head_seq:
        # Either appended after the head was read (PostgreSQL, concurrent appender) or written around it.
        table = HEAD
        now = session.execute(select(table.c.seq).where(table.c.id == HEAD_ID)).scalar_one_or_none()
        if now is None or int(now) < last_seq:
            problems.add(
                "head-mismatch",
                last_seq,
                f"events up to seq {last_seq} lie beyond audit_head (seq {head_seq})",
            )
