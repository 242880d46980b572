"""`ingestctl` custody, flag, classification, hold, extension and purge commands, as an operator runs
them: real ingestctl processes talking to the real daemon over its control socket, on a real SQLite
catalog and object store; JSON that parses, one-line errors, every change audited as the OS user.
Roles for other OS users are shown in test_control.py; root here holds the admin role.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from store.catalog import Catalog
from store.models import AuditEvent, Flag, FlagKind, Recording
from store.objects import FileObjectStore
from tests.support import records as seed
from tests.support.osusers import OsUsers, run_ctl_as
from tests.system.harness import Daemon, wait_for

ENTRY = "from ingestd.ctl import main; main()"
LONG_AGO = datetime(2024, 1, 10, 2, 0, tzinfo=UTC)


@pytest.fixture
def station(daemon: Daemon) -> dict[str, Any]:
    """The real daemon on a seeded catalog; ingestctl reaches it over the control socket."""
    facts = seeded(daemon)
    daemon.start()
    # The retention job runs once at start and notices the three seeded recordings. Wait for it, so a
    # test comparing the audit trail before and after a command sees only what that command did.
    wait_for(
        "the start-up retention notices",
        lambda: [e.action for e in audit_rows(facts)].count("retention.notice") == len(facts["recordings"]),
    )
    return facts


def seeded(daemon: Daemon) -> dict[str, Any]:
    """The daemon's catalog with two officers, a camera, three recordings (one shared object), a flag."""
    daemon.base.mkdir(parents=True)
    daemon.write_config()
    seed.current_schema(daemon.catalog_url)
    catalog = Catalog.open(daemon.catalog_url)
    store = FileObjectStore(daemon.store).create_directories()
    seed.audit_log(daemon.base)  # the daemon's signing key and checkpoint file, in its state directory
    try:
        with catalog.transaction() as db:
            zhang = seed.officer(db, "000123", "张三")
            seed.officer(db, "000456", "李四")
            camera = seed.camera(db, "ZFY0001", assigned=zhang, first_seen_at=LONG_AGO)
            old = seed.stored_object(db, seed.payload("old"), stored_at=LONG_AGO, store=store)
            shared = seed.stored_object(db, seed.payload("shared"), stored_at=LONG_AGO, store=store)
            ids = [
                seed.recording(
                    db, camera, obj, recorded_at=LONG_AGO - timedelta(hours=1), ingested_at=LONG_AGO
                ).id
                for obj in (old, shared, shared)
            ]
            flag = Flag(
                kind=FlagKind.GAP,
                dedup_key="gap:r1:r2",
                raised_at=LONG_AGO,
                camera_id=camera.id,
                recording_id=ids[1],
                details={"gap_s": 900.0},
            )
            db.add(flag)
            db.flush()
            facts = {
                "config": daemon.config_path,
                "url": daemon.catalog_url,
                "recordings": ids,
                "flag": flag.id,
                "store": store,
                "old": old.blake3,
                "shared": shared.blake3,
                "daemon": daemon,
            }
    finally:
        catalog.close()
    return facts


def ctl(station: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *args, "--config", str(station["config"])],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def ok_json(station: dict[str, Any], *args: str) -> Any:
    done = ctl(station, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def audit_rows(station: dict[str, Any]) -> list[AuditEvent]:
    catalog = Catalog.open(station["url"])
    try:
        with catalog.transaction() as db:
            return list(db.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all())
    finally:
        catalog.close()


def test_custody_commands_print_json_and_are_audited_as_the_os_user(station: dict[str, Any]) -> None:
    out = ok_json(station, "checkout", "ZFY0001", "--officer", "000456")
    assert (out["device_serial"], out["officer_no"], out["kind"], out["note"]) == (
        "ZFY0001",
        "000456",
        "check-out",
        "named-by-clerk",
    )
    back = ok_json(station, "checkin", "ZFY0001", "--note", "card reader")
    assert (back["kind"], back["officer_no"], back["note"]) == ("check-in", "000456", "card reader")
    by_device = ok_json(station, "custody", "--device", "ZFY0001")
    by_officer = ok_json(station, "custody", "--officer", "000123")
    assert [e["kind"] for e in by_device] == ["check-out", "check-in"]
    assert by_officer == []
    user = pwd.getpwuid(os.getuid()).pw_name
    events = [e for e in audit_rows(station) if e.action.startswith(("custody.", "ctl.check"))]
    assert [(e.action, e.actor_user, e.actor_uid) for e in events] == [
        ("custody.check-out", user, os.getuid()),
        ("ctl.checkout", user, os.getuid()),
        ("custody.check-in", user, os.getuid()),
        ("ctl.checkin", user, os.getuid()),
    ]
    assert all(e.source.startswith(f"ctl:uid={os.getuid()} ") for e in events)  # from SO_PEERCRED
    assert {e.actor_role for e in events} == {"admin"}
    text = ctl(station, "custody", "--device", "ZFY0001")
    assert text.returncode == 0
    assert "check-in" in text.stdout
    assert "李四" in text.stdout


def test_flags_explain_tag_hold_release_extend_print_json(station: dict[str, Any]) -> None:
    flag, (first, second, third) = station["flag"], station["recordings"]
    assert [f["id"] for f in ok_json(station, "flags")] == [flag]
    explained = ok_json(station, "explain", str(flag), "--text", "停车执勤 关闭记录仪")
    assert (explained["status"], explained["explanation"]) == ("explained", "停车执勤 关闭记录仪")
    assert ok_json(station, "flags") == []
    assert [f["status"] for f in ok_json(station, "flags", "--all")] == ["explained"]

    tagged = ok_json(
        station,
        "tag",
        str(second),
        str(third),
        "--case-id",
        "A-17",
        "--tag",
        "evidence",
        "--confidentiality",
        "privacy",
    )
    assert [t["changes"]["retention_class"] for t in tagged] == [["routine", "long-term"]] * 2
    held = ok_json(station, "hold", "--in-case", "A-17", "--reason", "litigation")
    assert [h["recording_id"] for h in held] == [second, third]
    released = ok_json(station, "release", str(second), "--reason", "closed")
    assert released[0]["changes"]["legal_hold"] == [True, False]
    extended = ok_json(station, "extend", str(first), "--days", "3", "--reason", "island patrol")
    assert extended["working_days"] == 3
    assert datetime.fromisoformat(extended["deadline_at"]) > datetime.fromisoformat(
        extended["previous_deadline_at"]
    )
    actions = [e.action for e in audit_rows(station) if not e.action.startswith("ctl.")]
    assert actions.count("recording.classify") == 2
    assert actions[-4:] == [
        "recording.hold",
        "recording.hold",
        "recording.release",
        "recording.extend-deadline",
    ]


def test_extend_never_moves_a_deadline_earlier(station: dict[str, Any]) -> None:
    first = station["recordings"][0]

    def deadline() -> tuple[datetime, str | None]:
        catalog = Catalog.open(station["url"])
        try:
            with catalog.transaction() as db:
                row = db.get(Recording, first)
                assert row is not None
                return row.deadline_at, row.deadline_extension_reason
        finally:
            catalog.close()

    one = ok_json(station, "extend", str(first), "--days", "1", "--reason", "flood")
    three = ok_json(station, "extend", str(first), "--days", "3", "--reason", "island patrol")
    assert datetime.fromisoformat(three["deadline_at"]) > datetime.fromisoformat(one["deadline_at"])
    before = audit_rows(station)
    shorter = ctl(station, "extend", str(first), "--days", "2", "--reason", "second thoughts")
    assert shorter.returncode == 0, shorter.stderr
    assert shorter.stdout.startswith(f"recording {first}: deadline unchanged, already ")
    assert deadline() == (datetime.fromisoformat(three["deadline_at"]), "island patrol")
    added = audit_rows(station)[len(before) :]
    assert [e.action for e in added] == ["ctl.extend"]  # the attempt; no extend-deadline event
    beyond = ctl(station, "extend", str(first), "--days", "4", "--reason", "x")
    assert beyond.returncode == 2, beyond.stderr
    assert "exceeds the maximum of 3" in beyond.stderr
    assert deadline()[0] == datetime.fromisoformat(three["deadline_at"])


def test_purge_dry_run_then_real_run_as_json(station: dict[str, Any]) -> None:
    first, second, third = station["recordings"]
    ok_json(station, "hold", str(second), "--reason", "complaint")
    # Stored two years ago: notices first (the daemon's notice job or this run), nothing deleted yet.
    noticed = ok_json(station, "purge")
    assert noticed["done"]["removed_objects"] == noticed["done"]["purged_recordings"] == []
    catalog = Catalog.open(station["url"])
    try:
        with catalog.transaction() as db:
            rows = db.scalars(select(Recording).order_by(Recording.id)).all()
            assert [row.id for row in rows if row.purge_notice_at is not None] == [first, third]
            for row in rows:  # the notice period has passed
                if row.purge_notice_at is not None:
                    row.purge_notice_at = row.purge_notice_at - timedelta(days=15)
    finally:
        catalog.close()
    dry = ok_json(station, "purge", "--dry-run")
    assert dry["dry_run"] is True
    assert dry["done"] is None
    assert dry["deletable_objects"] == [station["old"]]
    assert dry["kept_objects"] == [
        {"blake3": station["shared"], "reason": "still-referenced", "referenced_by": [second]}
    ]
    assert station["store"].exists(station["old"])
    real = ok_json(station, "purge")
    assert {k: real[k] for k in ("deletable_recordings", "deletable_objects", "kept_objects")} == {
        k: dry[k] for k in ("deletable_recordings", "deletable_objects", "kept_objects")
    }
    assert real["done"]["removed_objects"] == [station["old"]]
    assert not station["store"].exists(station["old"])
    assert station["store"].exists(station["shared"])  # held recording 2 still needs it


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("explain", "999", "--text", "x"), "no flag with id 999"),
        (("explain", "1", "--text", "   "), "explain: text must be a non-empty text"),
        (("explain", "abc", "--text", "x"), "'abc' is not a flag id"),
        (("checkout", "ZFY9999"), "no camera with device serial 'ZFY9999'"),
        (("checkout", "ZFY0001", "--officer", "999999"), "no officer with number '999999'"),
        (("custody", "--device", "ZFY0001", "--officer", "000123"), "not both"),
        (("extend", "1", "--days", "5", "--reason", "x"), "exceeds the maximum of 3"),
        (("hold", "42", "--reason", "x"), "no recording with id 42"),
        (("tag", "1"), "nothing to set"),
        (("tag", "1", "--confidentiality", "secret"), "Invalid value for '--confidentiality'"),
        (("flags", "--everything"), "No such option '--everything'"),
    ],
)
def test_bad_ids_and_options_get_one_clear_line_and_a_nonzero_exit(
    station: dict[str, Any], args: tuple[str, ...], expected: str
) -> None:
    before = audit_rows(station)
    done = ctl(station, *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert expected in done.stderr
    assert done.stdout == ""
    added = audit_rows(station)[len(before) :]
    # Nothing changed; a refused change that reached the daemon is recorded as the attempt it was.
    assert all(e.action.startswith("ctl.") and e.outcome == "error" for e in added), [
        (e.action, e.outcome) for e in added
    ]


def test_roles_decide_who_may_hand_over_hold_release_and_purge(
    daemon: Daemon, shared_dir: Path, os_users: OsUsers
) -> None:
    sock = os_users.group("sock")
    groups = {role: os_users.group(role[:3]) for role in ("clerk", "approver", "viewer")}
    users = {role: os_users.user(role[0], [group, sock]) for role, group in groups.items()}
    daemon.control_dir = shared_dir
    daemon.control_config = "\n".join(
        [f'socket_group = "{sock}"', 'admin_group = ""', 'auditor_group = ""']
        + [f'{role}_group = "{group}"' for role, group in groups.items()]
    )
    facts = seeded(daemon)
    daemon.start()
    config = shared_dir / "config.toml"
    shutil.copyfile(daemon.config_path, config)
    config.chmod(0o644)
    first = str(facts["recordings"][0])

    def as_role(role: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run_ctl_as(users[role], *args, "--json", "--config", str(config))

    assert as_role("viewer", "flags").returncode == 0  # reading is for every role
    refused = as_role("viewer", "checkout", "ZFY0001")
    assert refused.returncode == 13, refused.stderr
    assert "permission denied" in refused.stderr
    assert as_role("clerk", "checkout", "ZFY0001").returncode == 0
    assert as_role("clerk", "hold", first, "--reason", "complaint").returncode == 0
    assert as_role("clerk", "release", first, "--reason", "closed").returncode == 13
    assert as_role("approver", "release", first, "--reason", "closed").returncode == 0
    assert as_role("approver", "purge", "--dry-run").returncode == 13
    # Classifying is a clerk's job; lowering protection is not (like release).
    assert (
        as_role("clerk", "tag", first, "--tag", "complaint", "--confidentiality", "privacy").returncode == 0
    )
    for lowering in (["--untag", "complaint"], ["--confidentiality", "normal"]):
        lowered = as_role("clerk", "tag", first, *lowering)
        assert lowered.returncode == 13, lowered.stderr
        assert "needs the approver or admin role" in lowered.stderr
        assert len(lowered.stderr.strip().splitlines()) == 1
    assert (
        as_role("approver", "tag", first, "--untag", "complaint", "--confidentiality", "normal").returncode
        == 0
    )

    outcomes = {(e.action, e.actor_user, e.outcome) for e in audit_rows(facts) if e.action.startswith("ctl.")}
    assert ("ctl.checkout", users["viewer"], "denied") in outcomes
    assert ("ctl.checkout", users["clerk"], "ok") in outcomes
    assert ("ctl.release", users["clerk"], "denied") in outcomes
    assert ("ctl.release", users["approver"], "ok") in outcomes
    assert ("ctl.purge", users["approver"], "denied") in outcomes
    assert ("ctl.tag", users["clerk"], "error") in outcomes  # the refused lowering, as the clerk
    classified = [e for e in audit_rows(facts) if e.action == "recording.classify"]
    assert [e.actor_user for e in classified] == [users["clerk"], users["approver"]]
    held = [e for e in audit_rows(facts) if e.action in ("recording.hold", "recording.release")]
    assert [(e.action, e.actor_user) for e in held] == [
        ("recording.hold", users["clerk"]),
        ("recording.release", users["approver"]),
    ]


def test_small_outputs_say_what_happened_double_checkout_warns_extend_unchanged_purge_table(
    station: dict[str, Any],
) -> None:
    first_out = ctl(station, "checkout", "ZFY0001")
    assert first_out.returncode == 0, first_out.stderr
    assert first_out.stderr == ""
    again = ctl(station, "checkout", "ZFY0001", "--officer", "000456")
    assert again.returncode == 0, again.stderr  # recorded: a clerk may re-attribute who has it
    (warning,) = again.stderr.splitlines()
    assert warning.startswith("ingestctl: warning: ZFY0001 was already checked out (since ")
    assert "recorded as a re-attribution" in warning
    assert [e["kind"] for e in ok_json(station, "custody", "--device", "ZFY0001")] == ["check-out"] * 2
    assert " CST  check-out" in again.stdout  # station time with its zone

    first = str(station["recordings"][0])
    extended = ctl(station, "extend", first, "--days", "2", "--reason", "road closed")
    assert extended.returncode == 0, extended.stderr
    assert "unchanged" not in extended.stdout
    same = ctl(station, "extend", first, "--days", "2", "--reason", "road closed")
    assert same.returncode == 0, same.stderr
    assert same.stdout.startswith(f"recording {first}: deadline unchanged, already ")
    assert same.stdout.rstrip().endswith("CST (nothing extended)")

    dry = ctl(station, "purge", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "{" not in dry.stdout  # a table, not a Python dict
    lines = dry.stdout.splitlines()
    assert lines[0].startswith("would notice ")
    assert lines[1].startswith("kept: ")
    assert any(title.strip() in ("Would purge", "Would purge: none") for title in lines)

    assert ctl(station, "approvals").stdout == "approvals: none\n"
    for program in ("from ingestd.cli import main; main()", ENTRY):
        version = subprocess.run(
            [sys.executable, "-c", program, "--version"], capture_output=True, text=True, check=False
        )
        assert version.returncode == 0, version.stderr
        assert re.fullmatch(r"ingest(d|ctl) \d+\.\d+\.\d+\n", version.stdout), version.stdout
