"""The audit chain on real databases: every kind of tampering is caught and named, appends never fork.

Tampering is done the way an attacker with database access would: raw SQL against the tables, with
hashes recomputed from the published rule (reimplemented here, independently of store.audit).
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import select, text

from ingestd.services import signed_history
from store.audit import (
    GENESIS_HASH,
    Actor,
    AuditError,
    AuditLog,
    AuditProblem,
    Role,
    verify_chain,
)
from store.catalog import Catalog, _begin_deferred, _begin_immediate
from store.checkpoints import Checkpoint, CheckpointFile
from store.models import AuditEvent, AuditHead, Base, Unit
from store.objects.sealing import FS_APPEND_FL, get_inode_flags, set_inode_flags
from store.signing import PRIVATE_KEY_NAME, PUBLIC_KEY_NAME, Signer, SigningKeyError, load_public_key
from tests.support.audit import rewrite_chain, spec_hash

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
CLERK = Actor(user="li.clerk", uid=1001, role=Role.CLERK, source="ctl:uid=1001")


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return Signer.load_or_create(tmp_path / "state")


def make_log(tmp_path: Path, signer: Signer, every: int = 5) -> AuditLog:
    return AuditLog(signer, tmp_path / "state" / "audit-checkpoints.jsonl", every, set_append_only=False)


def append_events(catalog: Catalog, log: AuditLog, count: int, start: int = 0) -> None:
    """`count` events, one transaction each, as the daemon would write them."""
    for i in range(start, start + count):
        with catalog.transaction() as session:
            log.append(
                session,
                actor=CLERK,
                action="custody.check-out",
                subject=f"camera:ZFY{i:04d}",
                details={"officer": "000123", "n": i, "名": "张三"},
                at=T0 + timedelta(minutes=i),
            )


def verify(
    catalog: Catalog,
    log: AuditLog,
    signer: Signer,
    *,
    checkpoint_every: int | None = None,
    batch_size: int = 1000,
) -> list[AuditProblem]:
    with catalog.transaction() as session:
        return verify_chain(
            session,
            checkpoint_path=log.checkpoints.path,
            public_key=signer.public_key,
            checkpoint_every=checkpoint_every,
            batch_size=batch_size,
        )


def kinds(problems: list[AuditProblem]) -> list[tuple[str, int | None]]:
    return [(p.kind, p.seq) for p in problems]


def tamper(catalog: Catalog, sql: str, **params: object) -> None:
    with catalog.engine.begin() as connection:
        connection.execute(text(sql), params)


def rewind_head(catalog: Catalog, seq: int) -> None:
    """Point audit_head at event `seq`, as an attacker covering deleted events would."""
    with catalog.transaction() as session:
        last = session.get_one(AuditEvent, seq)
    tamper(catalog, "UPDATE audit_head SET seq = :s, hash = :h", s=seq, h=last.hash)


def checkpoint_seqs(log: AuditLog) -> list[int]:
    return [line.checkpoint.seq for line in log.checkpoints.lines() if line.checkpoint is not None]


# --- a clean chain ----------------------------------------------------------------------------------


def test_clean_chain_links_from_genesis_and_checkpoints_after_commit(
    catalog: Catalog, tmp_path: Path, signer: Signer
) -> None:
    log = make_log(tmp_path, signer, every=5)
    append_events(catalog, log, 12)
    with catalog.transaction() as session:
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        head = session.get_one(AuditHead, 1)
    assert [e.seq for e in events] == list(range(1, 13))
    assert events[0].prev_hash == GENESIS_HASH
    previous = GENESIS_HASH
    for event in events:
        assert event.prev_hash == previous
        assert event.hash == spec_hash(previous, event)  # the rule, as documented
        assert event.at.tzinfo is UTC
        previous = event.hash
    assert (head.seq, head.hash) == (12, events[-1].hash)
    assert events[3].details == {"officer": "000123", "n": 3, "名": "张三"}
    assert checkpoint_seqs(log) == [5, 10]
    assert verify(catalog, log, signer, checkpoint_every=5) == []


def test_on_demand_checkpoint_signs_the_committed_head(
    catalog: Catalog, tmp_path: Path, signer: Signer
) -> None:
    log = make_log(tmp_path, signer, every=1000)
    assert log.checkpoint(catalog) is None  # empty chain: nothing to sign
    append_events(catalog, log, 3)
    assert checkpoint_seqs(log) == []
    made = log.checkpoint(catalog)
    assert made is not None
    assert made.seq == 3
    assert checkpoint_seqs(log) == [3]
    with catalog.sessions() as session:
        assert made.hash == session.get_one(AuditEvent, 3).hash
        session.commit()
        # A session with a transaction open could hold uncommitted events: refused.
        session.execute(select(AuditEvent.seq)).all()
        with pytest.raises(AuditError, match="no transaction open"):
            log.checkpoint(session)
        session.rollback()
        assert log.checkpoint(session) is not None  # idle again: allowed
    assert verify(catalog, log, signer) == []


def test_anchor_signs_an_unsigned_head_once_so_deleting_the_last_event_is_caught(
    catalog: Catalog, tmp_path: Path, signer: Signer
) -> None:
    log = make_log(tmp_path, signer, every=1000)
    assert log.anchor(catalog) is None  # empty chain: nothing to sign
    append_events(catalog, log, 2)
    made = log.anchor(catalog)
    assert made is not None
    assert made.seq == 2
    assert log.anchor(catalog) is None  # nothing new: no second line
    fresh = make_log(tmp_path, signer, every=1000)  # another process (ingestctl) reads the file instead
    assert fresh.anchor(catalog) is None
    assert checkpoint_seqs(log) == [2]
    append_events(catalog, log, 1, start=2)
    assert log.anchor(catalog) is not None
    assert checkpoint_seqs(log) == [2, 3]
    # One event fewer than checkpoint_every: delete the newest and rewind the head over it.
    tamper(catalog, "DELETE FROM audit_events WHERE seq = 3")
    rewind_head(catalog, 2)
    assert kinds(verify(catalog, log, signer)) == [("tail-missing", 3)]


def test_a_failed_anchor_is_logged_and_kept_not_raised(
    catalog: Catalog, tmp_path: Path, signer: Signer
) -> None:
    log = make_log(tmp_path, signer, every=1000)
    append_events(catalog, log, 1)
    log.checkpoints.path.parent.joinpath("audit-checkpoints.jsonl").mkdir()  # cannot be opened as a file
    assert log.anchor(catalog) is None
    assert log.last_checkpoint_error is not None
    assert "audit-checkpoints.jsonl" in log.last_checkpoint_error


def test_checkpoints_of_another_catalog_are_named_as_such_not_as_a_missing_tail(
    sqlite_catalog: Catalog, tmp_path: Path, signer: Signer
) -> None:
    log = make_log(tmp_path, signer, every=1000)
    append_events(sqlite_catalog, log, 5)
    assert log.anchor(sqlite_catalog) is not None
    # The same state directory (key and checkpoint file) paired with another catalog: empty, then in use.
    other = Catalog.open(f"sqlite:///{tmp_path / 'other.db'}")
    Base.metadata.create_all(other.engine)
    try:
        problems = verify(other, log, signer)
        assert kinds(problems) == [("catalog-mismatch", None)]
        assert "has no events" in problems[0].detail
        assert "or every event of this one was deleted" in problems[0].detail
        append_events(other, make_log(tmp_path / "b", Signer.load_or_create(tmp_path / "b")), 2, start=100)
        problems = verify(other, log, signer)
        assert kinds(problems) == [("catalog-mismatch", None)]
        assert "another catalog" in problems[0].detail
        assert "seq 5" in problems[0].detail
    finally:
        other.close()
    assert verify(sqlite_catalog, log, signer) == []


def test_lines_from_before_genesis_still_verify_and_a_bad_genesis_is_a_garbled_line(
    catalog: Catalog, tmp_path: Path, signer: Signer
) -> None:
    log = make_log(tmp_path, signer, every=1000)
    append_events(catalog, log, 3)
    with catalog.transaction() as session:
        third = session.get_one(AuditEvent, 3)
    legacy = Checkpoint.sign(signer, seq=3, hash=third.hash, at=T0, genesis=None)
    assert b"genesis" not in legacy.to_line()
    log.checkpoints.append(legacy)
    assert verify(catalog, log, signer) == []
    record = json.loads(legacy.to_line())
    log.checkpoints.path.write_text(json.dumps({**record, "genesis": None}) + "\n")
    problems = verify(catalog, log, signer)
    assert kinds(problems) == [("checkpoint-file", None)]
    assert "genesis is not 64 lowercase hex digits" in problems[0].detail


# --- each kind of tampering, caught and named -----------------------------------------------------


def test_edited_row_is_a_hash_mismatch(catalog: Catalog, tmp_path: Path, signer: Signer) -> None:
    log = make_log(tmp_path, signer)
    append_events(catalog, log, 7)
    tamper(catalog, """UPDATE audit_events SET details = '{"officer":"999999"}' WHERE seq = 3""")
    assert kinds(verify(catalog, log, signer)) == [("hash-mismatch", 3)]


def test_edited_row_with_its_hash_recomputed_breaks_the_next_link(
    catalog: Catalog, tmp_path: Path, signer: Signer
) -> None:
    log = make_log(tmp_path, signer, every=100)
    append_events(catalog, log, 5)
    with catalog.transaction() as session:
        row = session.get_one(AuditEvent, 2)
        row.subject = "camera:FORGED"
        forged = spec_hash(row.prev_hash, row)
    tamper(catalog, "UPDATE audit_events SET subject = 'camera:FORGED', hash = :h WHERE seq = 2", h=forged)
    assert kinds(verify(catalog, log, signer)) == [("broken-link", 3)]


def test_deleted_middle_row_is_a_seq_gap(catalog: Catalog, tmp_path: Path, signer: Signer) -> None:
    log = make_log(tmp_path, signer)
    append_events(catalog, log, 8)
    tamper(catalog, "DELETE FROM audit_events WHERE seq IN (3, 4)")
    problems = verify(catalog, log, signer)
    assert kinds(problems) == [("seq-gap", 3)]
    assert "3..4" in problems[0].detail


def test_deleted_first_rows_are_a_seq_gap(catalog: Catalog, tmp_path: Path, signer: Signer) -> None:
    log = make_log(tmp_path, signer, every=100)
    append_events(catalog, log, 4)
    tamper(catalog, "DELETE FROM audit_events WHERE seq = 1")
    assert kinds(verify(catalog, log, signer)) == [("seq-gap", 1)]


def test_deleted_tail_after_a_checkpoint_is_caught_even_with_the_head_fixed(
    catalog: Catalog, tmp_path: Path, signer: Signer
) -> None:
    log = make_log(tmp_path, signer, every=5)
    append_events(catalog, log, 7)
    assert log.checkpoint(catalog) is not None  # signs seq 7
    tamper(catalog, "DELETE FROM audit_events WHERE seq >= 6")
    # Head left alone: the head and the checkpoint both say rows are missing.
    assert sorted(kinds(verify(catalog, log, signer))) == [("head-mismatch", 7), ("tail-missing", 7)]
    # A careful attacker also rewinds the head: only the signed checkpoint still knows.
    rewind_head(catalog, 5)
    assert kinds(verify(catalog, log, signer)) == [("tail-missing", 7)]


def test_consistently_rewritten_chain_is_caught_only_by_the_checkpoints(
    catalog: Catalog, tmp_path: Path, signer: Signer
) -> None:
    log = make_log(tmp_path, signer, every=5)
    append_events(catalog, log, 11)
    # The attacker rewrites history and recomputes every hash and the head: the chain is self-consistent.
    assert rewrite_chain(catalog.engine, {"officer": "000999"}) == 11
    empty = tmp_path / "no-checkpoints.jsonl"
    with catalog.transaction() as session:
        unsigned = verify_chain(session, checkpoint_path=empty, public_key=signer.public_key)
    assert unsigned == []  # without checkpoints the forgery is invisible...
    # ...with them, event 1 no longer hashes to the genesis every checkpoint names.
    problems = verify(catalog, log, signer)
    assert kinds(problems) == [("catalog-mismatch", None)]
    assert "2 signed checkpoint(s) up to seq 10" in problems[0].detail
    assert "rewritten from event 1" in problems[0].detail


def test_chain_rewritten_after_its_first_event_is_caught_at_each_checkpoint(
    catalog: Catalog, tmp_path: Path, signer: Signer
) -> None:
    log = make_log(tmp_path, signer, every=5)
    append_events(catalog, log, 11)
    assert rewrite_chain(catalog.engine, {"officer": "000999"}, start=2) == 11
    assert kinds(verify(catalog, log, signer)) == [("checkpoint-mismatch", 5), ("checkpoint-mismatch", 10)]


def test_head_row_removed_is_a_head_mismatch(catalog: Catalog, tmp_path: Path, signer: Signer) -> None:
    log = make_log(tmp_path, signer, every=100)
    append_events(catalog, log, 3)
    tamper(catalog, "DELETE FROM audit_head")
    assert kinds(verify(catalog, log, signer)) == [("head-mismatch", None)]
    append_events(catalog, log, 1, start=3)  # the head is re-seeded from the last row, the chain goes on
    assert verify(catalog, log, signer) == []


def test_tampered_garbled_and_foreign_checkpoint_lines_are_named(
    catalog: Catalog, tmp_path: Path, signer: Signer
) -> None:
    log = make_log(tmp_path, signer, every=3)
    append_events(catalog, log, 6)
    path = log.checkpoints.path
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    # Line 1: its hash swapped for another valid-looking one (as if to bless a rewritten chain).
    first = json.loads(lines[0])
    first["hash"] = "ab" * 32
    # Line 3: signed by some other key. Line 4: not JSON.
    other = Signer.load_or_create(tmp_path / "other")
    foreign = AuditLog(other, tmp_path / "other.jsonl", set_append_only=False)
    foreign_cp = foreign.checkpoint(catalog)
    assert foreign_cp is not None
    path.write_text(
        "\n".join([json.dumps(first), lines[1], foreign_cp.to_line().decode().strip(), "{not json"]) + "\n"
    )
    problems = verify(catalog, log, signer)
    assert kinds(problems) == [
        ("checkpoint-signature", 3),
        ("checkpoint-signature", 6),
        ("checkpoint-file", None),
    ]
    assert "does not verify" in problems[0].detail
    assert "unknown key" in problems[1].detail
    assert "line 4" in problems[2].detail
    # The verifier can trust both keys (after a rotation): then the foreign line verifies.
    with catalog.transaction() as session:
        both = verify_chain(session, checkpoint_path=path, public_key=[signer.public_key, other.public_key])
    assert kinds(both) == [("checkpoint-signature", 3), ("checkpoint-file", None)]


def test_missing_checkpoints_are_reported_when_an_interval_is_given(
    catalog: Catalog, tmp_path: Path, signer: Signer
) -> None:
    log = make_log(tmp_path, signer, every=4)
    append_events(catalog, log, 10)
    assert checkpoint_seqs(log) == [4, 8]
    log.checkpoints.path.unlink()
    assert kinds(verify(catalog, log, signer, checkpoint_every=4)) == [("checkpoint-missing", 1)]


def test_many_problems_are_all_listed(catalog: Catalog, tmp_path: Path, signer: Signer) -> None:
    log = make_log(tmp_path, signer, every=100)
    append_events(catalog, log, 9)
    tamper(catalog, "UPDATE audit_events SET outcome = 'denied' WHERE seq IN (2, 8)")
    tamper(catalog, "DELETE FROM audit_events WHERE seq = 5")
    assert kinds(verify(catalog, log, signer)) == [("hash-mismatch", 2), ("seq-gap", 5), ("hash-mismatch", 8)]


def test_small_batches_stream_the_same_verdict(catalog: Catalog, tmp_path: Path, signer: Signer) -> None:
    log = make_log(tmp_path, signer, every=100)
    append_events(catalog, log, 9)
    tamper(catalog, "UPDATE audit_events SET action = 'x' WHERE seq = 7")
    assert kinds(verify(catalog, log, signer, batch_size=2)) == [("hash-mismatch", 7)]


def test_unreadable_row_value_is_a_problem_not_a_crash(
    sqlite_catalog: Catalog, tmp_path: Path, signer: Signer
) -> None:
    log = make_log(tmp_path, signer, every=100)
    append_events(sqlite_catalog, log, 3)
    tamper(sqlite_catalog, "UPDATE audit_events SET at = 'yesterday', details = '{' WHERE seq = 2")
    assert kinds(verify(sqlite_catalog, log, signer)) == [("row-unreadable", 2)]


# --- transactions and concurrency ------------------------------------------------------------------


def test_event_rolls_back_with_its_transaction(catalog: Catalog, tmp_path: Path, signer: Signer) -> None:
    log = make_log(tmp_path, signer, every=1)

    class ChangeFailedError(Exception):
        pass

    def change_then_fail() -> None:
        with catalog.transaction() as session:
            session.add(Unit(unit_no="110105000000", name="朝阳分局"))
            log.append(session, actor=CLERK, action="unit.create", subject="unit:110105000000", at=T0)
            session.flush()  # both rows reached the database inside the transaction
            raise ChangeFailedError

    with pytest.raises(ChangeFailedError):
        change_then_fail()
    with catalog.transaction() as session:
        assert session.scalars(select(Unit)).all() == []
        assert session.scalars(select(AuditEvent)).all() == []
    assert checkpoint_seqs(log) == []  # nothing uncommitted was ever signed
    append_events(catalog, log, 1)
    with catalog.transaction() as session:
        assert session.scalars(select(AuditEvent.seq)).all() == [1]  # no hole where the rollback was
    assert checkpoint_seqs(log) == [1]
    assert verify(catalog, log, signer) == []


def test_event_in_a_rolled_back_savepoint_is_not_checkpointed(
    catalog: Catalog, tmp_path: Path, signer: Signer
) -> None:
    log = make_log(tmp_path, signer, every=1)
    with catalog.transaction() as session:
        log.append(session, actor=CLERK, action="a", subject="s", at=T0)
        nested = session.begin_nested()
        log.append(session, actor=CLERK, action="b", subject="s", at=T0)
        nested.rollback()
    assert checkpoint_seqs(log) == [1]
    assert verify(catalog, log, signer) == []


def run_appenders(catalog: Catalog, log: AuditLog, threads: int, each: int) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(each):
                with catalog.transaction() as session:
                    log.append(
                        session,
                        actor=Actor.system(f"dock:1-{n}"),
                        action="ingest.stored",
                        subject=f"thread:{n}:{i}",
                        at=T0 + timedelta(seconds=i),
                    )
        except BaseException as error:  # noqa: BLE001 - collected and asserted on below
            errors.append(error)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=120)
    return errors


def test_concurrent_appenders_never_fork_the_chain(catalog: Catalog, tmp_path: Path, signer: Signer) -> None:
    threads, each = 8, 15
    log = make_log(tmp_path, signer, every=10)
    assert run_appenders(catalog, log, threads, each) == []
    with catalog.transaction() as session:
        subjects = session.scalars(select(AuditEvent.subject).order_by(AuditEvent.seq)).all()
        seqs = session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)).all()
    assert seqs == list(range(1, threads * each + 1))
    assert sorted(subjects) == sorted(f"thread:{n}:{i}" for n in range(threads) for i in range(each))
    cps = checkpoint_seqs(log)
    assert cps
    assert max(cps) > threads * each - 10
    assert verify(catalog, log, signer, checkpoint_every=10) == []


def test_deferred_sqlite_transactions_also_serialise_on_the_head(tmp_path: Path, signer: Signer) -> None:
    # A writer on plain BEGIN (ours take BEGIN IMMEDIATE): the head UPDATE must still be the first
    # statement so a writer never reads a head it cannot then write after (SQLITE_BUSY_SNAPSHOT).
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'deferred.db'}")
    sa_event.remove(catalog.engine, "begin", _begin_immediate)
    sa_event.listen(catalog.engine, "begin", _begin_deferred)
    try:
        Base.metadata.create_all(catalog.engine)
        log = make_log(tmp_path, signer, every=1000)
        assert run_appenders(catalog, log, 4, 10) == []
        assert verify(catalog, log, signer) == []
        with catalog.transaction() as session:
            seqs = session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)).all()
        assert seqs == list(range(1, 41))
    finally:
        catalog.close()


# --- input that is refused -------------------------------------------------------------------------


def test_append_refuses_naive_times_non_json_details_and_overlong_fields(
    sqlite_catalog: Catalog, tmp_path: Path, signer: Signer
) -> None:
    log = make_log(tmp_path, signer)
    with sqlite_catalog.transaction() as session:
        with pytest.raises(ValueError, match="naive"):
            log.append(session, actor=CLERK, action="a", subject="s", at=datetime(2026, 1, 1))  # noqa: DTZ001
        with pytest.raises(AuditError, match="plain JSON"):
            log.append(session, actor=CLERK, action="a", subject="s", details={"when": T0}, at=T0)
        with pytest.raises(AuditError, match="action"):
            log.append(session, actor=CLERK, action="x" * 65, subject="s", at=T0)
    with pytest.raises(ValueError, match="'root'"):
        Actor(user="u", uid=0, role="root", source="ctl")  # type: ignore[arg-type]
    # A zone other than UTC is stored as the same instant in UTC.
    with sqlite_catalog.transaction() as session:
        stored = log.append(
            session,
            actor=CLERK,
            action="a",
            subject="s",
            at=datetime(2026, 3, 1, 16, 0, tzinfo=timezone(timedelta(hours=8))),
        )
        assert stored.at == T0
        assert stored.at.tzinfo is UTC


# --- the signing key -------------------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)  # the worst case: nothing narrows the mode we ask for
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("open_umask")
def test_key_is_created_0600_published_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = Signer.load_or_create(state)
    key = state / PRIVATE_KEY_NAME
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in key.read_bytes()  # PKCS8 PEM
    assert [p.name for p in state.iterdir() if p.name.endswith(".tmp")] == []
    public = load_public_key(state / PUBLIC_KEY_NAME)
    assert public == first.public_key
    second = Signer.load_or_create(state)
    assert second.key_id == first.key_id
    assert first.key_id.startswith("ed25519:")


def test_concurrent_first_starts_agree_on_one_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ids: list[str] = []
    start = threading.Barrier(6)

    def starter() -> None:
        start.wait()
        ids.append(Signer.load_or_create(state).key_id)

    workers = [threading.Thread(target=starter) for _ in range(6)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=30)
    assert len(ids) == 6
    assert len(set(ids)) == 1
    assert load_public_key(state / PUBLIC_KEY_NAME) == Signer.load_or_create(state).public_key


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_group_or_world_accessible_key_is_refused(tmp_path: Path, mode: int) -> None:
    state = tmp_path / "state"
    Signer.load_or_create(state)
    (state / PRIVATE_KEY_NAME).chmod(mode)
    with pytest.raises(SigningKeyError, match="group or others") as caught:
        Signer.load_or_create(state)
    assert f"{mode:04o}" in str(caught.value)
    assert caught.value.exit_code != 0


def test_key_symlink_and_garbage_are_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    elsewhere = tmp_path / "elsewhere.key"
    elsewhere.write_bytes(b"x")
    elsewhere.chmod(0o600)
    (state / PRIVATE_KEY_NAME).symlink_to(elsewhere)
    with pytest.raises(SigningKeyError, match="cannot open"):
        Signer.load_or_create(state)
    (state / PRIVATE_KEY_NAME).unlink()
    (state / PRIVATE_KEY_NAME).write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n")
    (state / PRIVATE_KEY_NAME).chmod(0o600)
    with pytest.raises(SigningKeyError, match="PEM"):
        Signer.load_or_create(state)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the key to another user")
def test_key_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Signer.load_or_create(state)
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(state / PRIVATE_KEY_NAME, nobody, -1)  # mode 0600 still: only the owner is wrong
    with pytest.raises(SigningKeyError, match=f"owned by uid {nobody}") as caught:
        Signer.load_or_create(state)
    assert caught.value.exit_code == 40
    with pytest.raises(SigningKeyError, match=f"owned by uid {nobody}"):
        Signer.load(state)


def test_a_missing_key_is_not_regenerated_over_checkpoints_even_with_an_empty_catalog(
    sqlite_catalog: Catalog, tmp_path: Path, signer: Signer
) -> None:
    state = tmp_path / "state"
    log = make_log(tmp_path, signer)
    checkpoints = log.checkpoints.path
    assert signed_history(sqlite_catalog, checkpoints) is None  # a new station: a key may be made
    append_events(sqlite_catalog, log, 1)
    assert log.anchor(sqlite_catalog) is not None
    (state / PRIVATE_KEY_NAME).unlink()
    with pytest.raises(SigningKeyError, match=r"missing, but the audit chain already has 1 event"):
        Signer.load_or_create(state, history=lambda: signed_history(sqlite_catalog, checkpoints))
    tamper(sqlite_catalog, "DELETE FROM audit_events")  # the catalog emptied too: the checkpoints remain
    with pytest.raises(SigningKeyError, match="already holds signed checkpoints"):
        Signer.load_or_create(state, history=lambda: signed_history(sqlite_catalog, checkpoints))
    assert not (state / PRIVATE_KEY_NAME).exists()


# --- the checkpoint file ---------------------------------------------------------------------------


def _clear_append_only(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        set_inode_flags(fd, get_inode_flags(fd) & ~FS_APPEND_FL)
    finally:
        os.close(fd)


def test_checkpoint_file_gets_the_append_only_attribute_or_records_why_not(
    catalog: Catalog, tmp_path: Path, signer: Signer
) -> None:
    log = AuditLog(signer, tmp_path / "cp.jsonl", checkpoint_every=1)
    append_events(catalog, log, 2)
    path = log.checkpoints.path
    try:
        if log.checkpoints.append_only:
            with pytest.raises(PermissionError):
                path.write_text("rewritten\n")  # opens without O_APPEND: the kernel refuses
        else:
            assert log.checkpoints.append_only is False
            assert log.checkpoints.append_only_error  # the refusal is recorded, not silently lost
    finally:
        if log.checkpoints.append_only:
            _clear_append_only(path)
    assert checkpoint_seqs(log) == [1, 2]
    assert verify(catalog, log, signer) == []


def test_torn_last_line_is_reported(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "cp.jsonl"
    path.write_bytes(b'{"seq":1,')
    lines = list(CheckpointFile(path).lines())
    assert [(line.number, line.checkpoint) for line in lines] == [(1, None)]
    assert "torn" in (lines[0].error or "")
