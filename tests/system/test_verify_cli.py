"""`ingestctl verify` catches every kind of tampering and names it, on a station built by `ingestd import`."""

from __future__ import annotations

import grp
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, delete, func, insert, select, update

from drivers.simulator.volume import build_volume
from ingestd import operations
from ingestd.config import load_config
from ingestd.evidence.approvals import NewApproval, create_approval, revoke_approval
from ingestd.services import Services
from store.audit import Actor, AuditLog, Role
from store.catalog import Catalog
from store.checkpoints import CheckpointFile
from store.models import (
    Approval,
    AuditEvent,
    AuditHead,
    CustodyEvent,
    Recording,
    SessionState,
    StoredObject,
)
from store.signing import Signer
from tests.support.audit import rewrite_chain
from tests.support.objectstore import unseal_tree
from tests.support.osusers import OsUsers, run_ctl_as
from tests.support.records import CLERK, officer
from tests.system.harness import Daemon, SimulatedCamera, stored_recordings, wait_for
from tests.system.test_daemon import wait_sessions

CLI = {"ingestd": "from ingestd.cli import main; main()", "ingestctl": "from ingestd.ctl import main; main()"}


class Station:
    def __init__(self, base: Path, config: Path, url: str) -> None:
        self.base = base
        self.config = config
        self.url = url

    @classmethod
    def create(cls, base: Path, checkpoint_every: int = 3) -> Station:
        station = cls(base, base / "config.toml", f"sqlite:///{base / 'state' / 'catalog.db'}")
        base.mkdir(parents=True)
        station.config.write_text(
            f"""
[daemon]
state_dir = "{base / "state"}"
[catalog]
url = "{station.url}"
[store]
root = "{base / "store"}"
[audit]
checkpoint_every = {checkpoint_every}
""",
            encoding="utf-8",
        )
        return station

    def run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", CLI[program], *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    def verify(self) -> tuple[int, list[dict[str, str]]]:
        done = self.run("ingestctl", "verify", "--objects", "--json")
        report = json.loads(done.stdout)
        return done.returncode, report["problems"]

    def objects(self) -> list[Path]:
        with create_engine(self.url).connect() as connection:
            digests = connection.execute(select(StoredObject.blake3)).scalars().all()
        return [self.base / "store" / "objects" / d[:2] / d[2:4] / d for d in digests]

    def sql(self, statement: object) -> None:
        engine = create_engine(self.url)
        with engine.begin() as connection:
            connection.execute(statement)  # type: ignore[call-overload]
        engine.dispose()


def build_station(tmp_path: Path, checkpoint_every: int = 3) -> Station:
    built = Station.create(tmp_path / "station", checkpoint_every)
    card = tmp_path / "card"
    build_volume(
        card,
        device_serial="ZFY9001",
        officer_name="张三",
        count=3,
        size_bytes=256 * 1024,
        start=datetime.now(UTC) - timedelta(hours=2),
        seed=9,
        hostile=False,
    )
    done = built.run("ingestd", "import", str(card), "--device-id", "ZFY9001")
    assert done.returncode == 0, done.stderr
    return built


@pytest.fixture
def station(tmp_path: Path) -> Iterator[Station]:
    built = build_station(tmp_path)
    try:
        yield built
    finally:
        unseal_tree(tmp_path)


def chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


def flip_a_byte(station: Station) -> None:
    target = station.objects()[0]
    chattr("-i", target)  # as a root attacker would
    with target.open("r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))


def delete_an_object(station: Station) -> None:
    target = station.objects()[0]
    chattr("-i", target)
    target.unlink()


def edit_an_audit_row(station: Station) -> None:
    station.sql(update(AuditEvent).where(AuditEvent.seq == 2).values(subject="recording:999"))


def delete_the_tail(station: Station) -> None:
    engine = create_engine(station.url)
    with engine.begin() as connection:
        head = connection.execute(select(func.max(AuditEvent.seq))).scalar_one()
        connection.execute(delete(AuditEvent).where(AuditEvent.seq > head - 3))
        last = connection.execute(
            select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
        ).one()
        connection.execute(update(AuditHead).values(seq=last.seq, hash=last.hash))  # cover the tracks
    engine.dispose()


def rewrite_everything(station: Station) -> None:
    engine = create_engine(station.url)
    rewrite_chain(engine, {"officer": "000999"})
    engine.dispose()


@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        (flip_a_byte, {"blake3-mismatch", "sha256-mismatch"}),
        (delete_an_object, {"missing"}),
        (edit_an_audit_row, {"hash-mismatch"}),
        (delete_the_tail, {"tail-missing"}),
        (rewrite_everything, {"catalog-mismatch"}),
    ],
)
def test_each_kind_of_tampering_is_caught_and_named(
    station: Station, tamper: Callable[[Station], None], named: set[str]
) -> None:
    code, problems = station.verify()
    assert (code, problems) == (0, [])
    tamper(station)
    code, problems = station.verify()
    assert code == 3
    assert named <= {problem["kind"] for problem in problems}, problems
    human = station.run("ingestctl", "verify", "--objects")  # piped: one whole line per problem, for grep
    assert human.returncode == 3
    # Each run of verify is itself audited, so this run's problems are its own: the text is checked on
    # its own terms. A wrapped line would be a third kind of line.
    *listed, summary = human.stdout.splitlines()
    assert all(re.fullmatch(r"PROBLEM \S+ \S+ .+?: .+", line) for line in listed), human.stdout
    assert summary.endswith(f"; {len(listed)} problem(s)"), human.stdout
    for kind in named:
        assert kind in human.stdout


def test_an_unsealed_object_is_reported(station: Station) -> None:
    chattr("-i", station.objects()[0])
    code, problems = station.verify()
    assert code == 3
    assert [p["kind"] for p in problems] == ["not-sealed"]


def delete_the_last_event(station: Station) -> int:
    """Delete the newest event and move the head back over it; returns the deleted seq."""
    engine = create_engine(station.url)
    with engine.begin() as connection:
        head = connection.execute(select(func.max(AuditEvent.seq))).scalar_one()
        connection.execute(delete(AuditEvent).where(AuditEvent.seq == head))
        last = connection.execute(
            select(AuditEvent.seq, AuditEvent.hash).where(AuditEvent.seq == head - 1)
        ).one()
        connection.execute(update(AuditHead).values(seq=last.seq, hash=last.hash))
    engine.dispose()
    return int(head)


def test_deleting_the_last_event_of_an_import_is_caught(tmp_path: Path) -> None:
    # Far fewer events than checkpoint_every: only the anchor at the end of each session or command
    # can catch this.
    station = build_station(tmp_path, checkpoint_every=1000)
    try:
        deleted = delete_the_last_event(station)  # the import's last event
        code, problems = station.verify()
        assert code == 3
        chain = [(p["kind"], p["subject"]) for p in problems if p["area"] == "audit"]
        assert chain == [("tail-missing", f"seq {deleted}")], problems
    finally:
        unseal_tree(tmp_path)


def test_a_missing_key_is_never_regenerated_once_the_chain_has_events(station: Station) -> None:
    key = station.base / "state" / "audit-signing.key"
    key.unlink()
    again = station.base / "card"
    again.mkdir()
    done = station.run("ingestd", "import", str(again), "--device-id", "ZFY9001")
    assert done.returncode == 40, done.stderr
    assert "missing" in done.stderr
    assert "restore" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not key.exists()


def test_a_pinned_public_key_catches_a_replaced_key_that_re_signed_a_rewritten_chain(
    station: Station, tmp_path: Path
) -> None:
    state = station.base / "state"
    pinned = tmp_path / "station-key.pem"  # what the agency kept off the machine
    shown = station.run("ingestd", "key", "show")
    assert shown.returncode == 0, shown.stderr
    pinned.write_text(shown.stdout, encoding="utf-8")
    assert station.run("ingestctl", "verify", "--public-key", str(pinned)).returncode == 0
    # Root rewrites the newest event (its record of the last verify), removes the checkpoints and puts in
    # a key of its own, which then signs the rewritten chain.
    engine = create_engine(station.url)
    with engine.connect() as connection:
        newest = connection.execute(select(func.max(AuditEvent.seq))).scalar_one()
    rewrite_chain(engine, {"clean": True}, start=newest)
    engine.dispose()
    checkpoints = state / "audit-checkpoints.jsonl"
    chattr("-a", checkpoints)
    checkpoints.unlink()
    forged = Signer.load_or_create(tmp_path / "forger")
    for name in ("audit-signing.key", "audit-signing.pub"):
        shutil.copyfile(tmp_path / "forger" / name, state / name)
    catalog = Catalog.open(station.url, create=False)
    try:
        assert AuditLog(forged, checkpoints, set_append_only=False).checkpoint(catalog) is not None
    finally:
        catalog.close()
    assert station.run("ingestctl", "verify").returncode == 0  # unpinned: the forgery passes...
    done = station.run("ingestctl", "verify", "--json", "--public-key", str(pinned))
    assert done.returncode == 3, done.stderr
    kinds = {problem["kind"] for problem in json.loads(done.stdout)["problems"]}
    assert {"key-mismatch", "checkpoint-signature"} <= kinds, done.stdout
    human = station.run("ingestctl", "verify", "--public-key", str(pinned))
    assert human.returncode == 3
    assert forged.key_id in human.stdout
    # A file that is not a public key is a usage error, not a verdict.
    bad = station.run("ingestctl", "verify", "--public-key", str(checkpoints))
    assert bad.returncode == 2
    assert "--public-key" in bad.stderr


# --- catalog rows edited behind the chain's back ------------------------------------------------------

APPROVER = Actor(user="wang.approver", uid=1002, role=Role.APPROVER, source="ctl:uid=1002")


@pytest.fixture
def classified(station: Station) -> Station:
    """Recording 1 tagged evidence (so long-term) and held; approval 1 valid, approval 2 revoked; the
    camera checked out by a clerk to another officer and back in; all done through the same code the
    control commands run, then signed as a command would."""
    services = Services.open(load_config(station.config), migrate=False)
    now = datetime.now(UTC)
    try:
        with services.catalog.transaction() as db:
            operations.tag(
                db,
                services.audit,
                actor=CLERK,
                now=now,
                retention=services.config.retention,
                recording_ids=[1],
                add_tags=["evidence"],
            )
            operations.hold(db, services.audit, actor=CLERK, now=now, reason="case 7", recording_ids=[1])
            for purpose in ("court", "press"):
                new = NewApproval(
                    purpose=purpose,
                    expires_at=now + timedelta(days=7),
                    recording_ids=(1,),
                    case_id=None,
                    allows_confidential=False,
                    requested_by="zhao",
                    grantee="zhao.clerk",
                )
                approval = create_approval(db, services.audit, APPROVER, new, now=now)
            revoke_approval(db, services.audit, APPROVER, approval.id, reason="withdrawn", now=now)
            officer(db, "000202", "李四")
            operations.checkout(
                db, services.audit, actor=CLERK, now=now, device_serial="ZFY9001", officer_no="000202"
            )
            operations.checkin(db, services.audit, actor=CLERK, now=now, device_serial="ZFY9001")
        services.audit.anchor(services.catalog)
    finally:
        services.close()
    return station


ROW_TAMPERING = {
    "class lowered": (
        update(Recording).where(Recording.id == 1).values(retention_class="routine"),
        ("row-mismatch", "recording:1"),
    ),
    "tags cleared": (
        update(Recording).where(Recording.id == 1).values(retention_tags=[]),
        ("row-mismatch", "recording:1"),
    ),
    "hold lifted": (
        update(Recording).where(Recording.id == 1).values(legal_hold=False),
        ("row-mismatch", "recording:1"),
    ),
    "approval extended": (
        update(Approval).where(Approval.id == 1).values(expires_at=datetime(2099, 1, 1, tzinfo=UTC)),
        ("row-mismatch", "approval:1"),
    ),
    "approval handed to another user": (
        update(Approval).where(Approval.id == 1).values(grantee="mallory"),
        ("row-mismatch", "approval:1"),
    ),
    "revocation undone": (
        update(Approval).where(Approval.id == 2).values(revoked_at=None),
        ("row-mismatch", "approval:2"),
    ),
    "approval inserted": (
        insert(Approval).values(
            id=3,
            approver="wang.approver",
            grantee="mallory",
            purpose="forged",
            scope_recording_ids=[1, 2, 3],
            allows_confidential=True,
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
            expires_at=datetime(2099, 1, 1, tzinfo=UTC),
        ),
        ("row-unaudited", "approval:3"),
    ),
    "custody row deleted": (delete(CustodyEvent), ("row-missing", "camera:ZFY9001")),
    "custody row re-attributed": (
        update(CustodyEvent).where(CustodyEvent.kind == "check-out").values(officer_id=None),
        ("row-unaudited", "camera:ZFY9001"),
    ),
}


@pytest.mark.parametrize("tampering", ROW_TAMPERING.values(), ids=ROW_TAMPERING.keys())
def test_custody_rows_edited_outside_the_chain_are_reported(
    classified: Station, tampering: tuple[object, tuple[str, str]]
) -> None:
    statement, (kind, subject) = tampering
    assert classified.verify() == (0, [])
    classified.sql(statement)
    code, problems = classified.verify()
    assert code == 3
    assert (kind, subject) in [(p["kind"], p["subject"]) for p in problems], problems
    assert {p["area"] for p in problems} == {"catalog"}, problems
    human = classified.run("ingestctl", "verify")
    assert human.returncode == 3
    assert f"PROBLEM catalog {kind} {subject}" in human.stdout


def test_deleting_the_event_of_the_last_control_command_is_caught(daemon: Daemon) -> None:
    daemon.start()
    station = Station(daemon.base, daemon.config_path, daemon.catalog_url)
    for _ in range(2):
        # A mutating command that fails (no recording 999) is audited and signed like one that succeeds.
        refused = station.run("ingestctl", "hold", "999", "--reason", "case 7")
        assert refused.returncode == 2, refused.stderr
    engine = create_engine(daemon.catalog_url)
    with engine.connect() as connection:
        newest = connection.execute(
            select(AuditEvent.action).order_by(AuditEvent.seq.desc()).limit(1)
        ).scalar()
    engine.dispose()
    assert newest == "ctl.hold"
    deleted = delete_the_last_event(station)
    code, problems = station.verify()
    assert code == 3
    assert ("tail-missing", f"seq {deleted}") in [(p["kind"], p["subject"]) for p in problems], problems


def test_deleting_the_check_out_of_the_last_undock_is_caught(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera]
) -> None:
    daemon.start()
    camera = make_camera("ZFY0701", files=1)
    camera.dock(daemon.docks)
    stored_recordings(daemon, "ZFY0701", 1)
    camera.undock(daemon.docks)
    station = Station(daemon.base, daemon.config_path, daemon.catalog_url)

    def signed_check_out() -> bool:
        engine = create_engine(daemon.catalog_url)
        with engine.connect() as connection:
            newest = connection.execute(
                select(AuditEvent.seq, AuditEvent.action).order_by(AuditEvent.seq.desc()).limit(1)
            ).one()
        engine.dispose()
        signed = CheckpointFile(daemon.state_dir / "audit-checkpoints.jsonl").last_seq(
            Signer.load(daemon.state_dir).key_id
        )
        return bool(newest.action == "custody.check-out" and signed == newest.seq)

    # The daemon keeps running: its shutdown checkpoint must not be what signs the check-out.
    wait_for("the check-out on undock, signed", signed_check_out)
    deleted = delete_the_last_event(station)
    code, problems = station.verify()
    assert code == 3
    assert ("tail-missing", f"seq {deleted}") in [(p["kind"], p["subject"]) for p in problems], problems


def test_an_auditor_verifies_with_the_public_key_without_the_stations_private_key(
    shared_dir: Path, daemon: Daemon, os_users: OsUsers, make_camera: Callable[..., SimulatedCamera]
) -> None:
    sock, auditors, readers = os_users.group("sock"), os_users.group("aud"), os_users.group("rd")
    auditor = os_users.user("a", [auditors, sock, readers])  # may read the catalog, never the key
    daemon.base = shared_dir / "station"
    daemon.control_dir = shared_dir
    daemon.control_config = f'socket_group = "{sock}"\nauditor_group = "{auditors}"'
    # Read access as an agency would grant it: the state directory belongs to the readers' group and is
    # setgid, so what the daemon creates in it is theirs to read where its mode allows (not the key, 0600).
    daemon.state_dir.mkdir(parents=True)
    os.chown(daemon.state_dir, -1, grp.getgrnam(readers).gr_gid)
    daemon.state_dir.chmod(0o2750)
    camera = make_camera("ZFY7001", files=2)
    daemon.start()
    camera.dock(daemon.docks)
    (ended,) = wait_sessions(daemon, "ZFY7001")
    assert ended.state is SessionState.DONE
    config = shared_dir / "config.toml"
    shutil.copyfile(daemon.config_path, config)
    config.chmod(0o644)
    key = daemon.state_dir / "audit-signing.key"
    assert (stat.S_IMODE(key.stat().st_mode), key.stat().st_uid) == (0o600, 0)
    pinned = shared_dir / "station-key.pem"  # what the agency kept off the machine
    shown = subprocess.run(
        [sys.executable, "-c", CLI["ingestd"], "key", "show", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    pinned.write_text(shown.stdout, encoding="utf-8")
    pinned.chmod(0o644)

    done = run_ctl_as(auditor, "verify", "--objects", "--json", "--config", str(config))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["clean"], report["recorded"], report["objects_checked"]) == (True, True, 2)
    with_pin = run_ctl_as(auditor, "verify", "--public-key", str(pinned), "--config", str(config))
    assert with_pin.returncode == 0, with_pin.stderr
    assert "(pinned)" in with_pin.stdout
    status = run_ctl_as(auditor, "status", "--json", "--config", str(config))
    assert json.loads(status.stdout)["last_verify"]["by"] == auditor
