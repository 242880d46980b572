"""Operator actions on real catalogs (SQLite file and PostgreSQL): each change and its audit event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ingestd import operations
from ingestd.config import DeadlinesConfig, RetentionConfig
from ingestd.policies.errors import ExtensionRefusedError
from store.audit import Actor, AuditLog, Role
from store.catalog import Catalog
from store.models import Camera, Confidentiality, Flag, FlagKind, FlagStatus, Recording, RetentionClass
from tests.support import records as seed
from tests.support.records import CLERK

APPROVER = Actor(user="wang.approver", uid=1002, role=Role.APPROVER, source="ctl:uid=1002")

T0 = datetime(2026, 3, 2, 0, 30, tzinfo=UTC)  # Monday 08:30 in Shanghai


@pytest.fixture
def audit(tmp_path: Path) -> AuditLog:
    return seed.audit_log(tmp_path)


@pytest.fixture
def station(catalog: Catalog) -> Catalog:
    """Two officers; ZFY0001 assigned to 000123, ZFY0002 assigned to nobody."""
    with catalog.transaction() as db:
        zhang = seed.officer(db, "000123", "张三")
        seed.officer(db, "000456", "李四")
        seed.camera(db, "ZFY0001", assigned=zhang, first_seen_at=T0)
        seed.camera(db, "ZFY0002", assigned=None, first_seen_at=T0)
    return catalog


# --- custody ----------------------------------------------------------------------------------------


def test_checkout_in_each_attribution_case_is_audited_and_read_back_per_camera_and_officer(
    station: Catalog, audit: AuditLog
) -> None:
    catalog = station
    with catalog.transaction() as db:
        named = operations.checkout(
            db, audit, actor=CLERK, now=T0, device_serial="ZFY0001", officer_no="000456"
        )
    with catalog.transaction() as db:
        operations.checkin(
            db,
            audit,
            actor=CLERK,
            now=T0 + timedelta(hours=9),
            device_serial="ZFY0001",
            note="card reader import",
        )
    with catalog.transaction() as db:
        assigned = operations.checkout(
            db, audit, actor=CLERK, now=T0 + timedelta(days=1), device_serial="ZFY0001"
        )
        unassigned = operations.checkout(
            db, audit, actor=CLERK, now=T0 + timedelta(days=1, minutes=1), device_serial="ZFY0002"
        )

    # 1. the clerk names an officer: the officer holds it, the clerk is the actor.
    assert (named.officer_no, named.actor, named.actor_role, named.note) == (
        "000456",
        "li.clerk",
        "clerk",
        "named-by-clerk",
    )
    # 2. no one named: the camera's assigned officer.
    assert (assigned.officer_no, assigned.note) == ("000123", "assigned-officer")
    # 3. nobody assigned: recorded as unassigned, never guessed.
    assert (unassigned.officer_no, unassigned.note) == (None, "unassigned")

    with catalog.transaction() as db:
        events = seed.audit_events(db)
        camera = db.scalars(select(Camera).where(Camera.device_serial == "ZFY0002")).one()
        assert camera.holder_officer_id is None
        assert camera.checked_out_at == T0 + timedelta(days=1, minutes=1)
        by_camera = operations.custody_history(db, device_serial="ZFY0001")
        by_officer = operations.custody_history(db, officer_no="000456")
        register = operations.custody_history(db)
    assert [(e.action, e.subject, e.actor_user, e.actor_uid, e.details["officer"]) for e in events] == [
        ("custody.check-out", "camera:ZFY0001", "li.clerk", 1001, "000456"),
        ("custody.check-in", "camera:ZFY0001", "li.clerk", 1001, "000456"),
        ("custody.check-out", "camera:ZFY0001", "li.clerk", 1001, "000123"),
        ("custody.check-out", "camera:ZFY0002", "li.clerk", 1001, None),
    ]
    assert [e.details["note"] for e in events] == [
        "named-by-clerk",
        "card reader import",
        "assigned-officer",
        "unassigned",
    ]
    assert [(e.kind, e.officer_no) for e in by_camera] == [
        ("check-out", "000456"),
        ("check-in", "000456"),
        ("check-out", "000123"),
    ]
    # 一人一档: the officer's file holds the check-out to them and the check-in of what they returned.
    assert [(e.kind, e.device_serial, e.at) for e in by_officer] == [
        ("check-out", "ZFY0001", T0),
        ("check-in", "ZFY0001", T0 + timedelta(hours=9)),
    ]
    assert len(register) == 4


def test_naming_an_officer_for_a_camera_already_out_keeps_the_time_it_went_out(
    station: Catalog, audit: AuditLog
) -> None:
    with station.transaction() as db:
        operations.checkout(db, audit, actor=CLERK, now=T0, device_serial="ZFY0001")
    with station.transaction() as db:
        entry = operations.checkout(
            db,
            audit,
            actor=CLERK,
            now=T0 + timedelta(hours=2),
            device_serial="ZFY0001",
            officer_no="000456",
        )
        camera = db.scalars(select(Camera).where(Camera.device_serial == "ZFY0001")).one()
        assert camera.holder is not None
        assert camera.holder.officer_no == "000456"
        assert camera.checked_out_at == T0
    assert entry.note is not None
    assert "re-attributed (was 000123" in entry.note


@pytest.mark.parametrize(
    ("serial", "officer_no", "error", "message"),
    [
        ("ZFY9999", None, operations.UnknownCameraError, "no camera with device serial 'ZFY9999'"),
        ("TOO-LONG-SERIAL", None, operations.RefusedError, "is not a device serial"),
        ("ZFY0001", "999999", operations.UnknownOfficerError, "no officer with number '999999'"),
    ],
)
def test_checkout_refuses_unknown_things_and_changes_nothing(
    station: Catalog,
    audit: AuditLog,
    *,
    serial: str,
    officer_no: str | None,
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message) as caught, station.transaction() as db:
        operations.checkout(db, audit, actor=CLERK, now=T0, device_serial=serial, officer_no=officer_no)
    assert getattr(caught.value, "exit_code", None) == 2
    with station.transaction() as db:
        assert seed.audit_events(db) == []
        assert operations.custody_history(db) == []


# --- flags ------------------------------------------------------------------------------------------


def _flag(catalog: Catalog, key: str) -> int:
    with catalog.transaction() as db:
        camera_id = db.scalars(select(Camera.id).where(Camera.device_serial == "ZFY0001")).one()
        flag = Flag(
            kind=FlagKind.GAP, dedup_key=key, raised_at=T0, camera_id=camera_id, details={"gap_s": 1800.0}
        )
        db.add(flag)
        db.flush()
        return flag.id


def test_explain_is_audited_leaves_the_open_list_and_stays_in_history(
    station: Catalog, audit: AuditLog
) -> None:
    gap = _flag(station, "gap:r1:r2")
    other = _flag(station, "gap:r2:r3")
    with station.transaction() as db:
        assert [f.id for f in operations.list_flags(db)] == [gap, other]
        view = operations.explain(
            db,
            audit,
            actor=CLERK,
            now=T0 + timedelta(hours=1),
            flag_id=gap,
            text="  battery swapped during the patrol  ",
        )
    assert (view.status, view.explanation, view.explained_by) == (
        "explained",
        "battery swapped during the patrol",
        "li.clerk",
    )
    with station.transaction() as db:
        assert [f.id for f in operations.list_flags(db)] == [other]
        history = {f.id: f for f in operations.list_flags(db, include_closed=True)}
        (event,) = seed.audit_events(db, "flag.explain")
    assert history[gap].explained_at == T0 + timedelta(hours=1)
    assert history[gap].device_serial == "ZFY0001"
    assert (event.subject, event.actor_user, event.details["explanation"]) == (
        f"flag:{gap}",
        "li.clerk",
        "battery swapped during the patrol",
    )


def test_explain_refuses_empty_text_an_unknown_flag_and_a_second_explanation(
    station: Catalog, audit: AuditLog
) -> None:
    gap = _flag(station, "gap:r1:r2")
    with pytest.raises(operations.RefusedError, match="needs text"), station.transaction() as db:
        operations.explain(db, audit, actor=CLERK, now=T0, flag_id=gap, text=" \n ")
    with pytest.raises(operations.UnknownFlagError, match="no flag with id 4242"), station.transaction() as s:
        operations.explain(s, audit, actor=CLERK, now=T0, flag_id=4242, text="x")
    with station.transaction() as db:
        assert [f.status for f in operations.list_flags(db)] == ["open"]
        operations.explain(db, audit, actor=CLERK, now=T0, flag_id=gap, text="first")
    with (
        pytest.raises(operations.RefusedError, match=r"already explained by li\.clerk"),
        station.transaction() as db,
    ):
        operations.explain(db, audit, actor=CLERK, now=T0, flag_id=gap, text="second")
    with station.transaction() as db:
        assert db.get_one(Flag, gap).explanation == "first"
        assert len(seed.audit_events(db, "flag.explain")) == 1


# --- classification, holds, deadlines ---------------------------------------------------------------------


def _recordings(catalog: Catalog, count: int, *, case_id: str | None = None) -> list[int]:
    with catalog.transaction() as db:
        camera = db.scalars(select(Camera).where(Camera.device_serial == "ZFY0001")).one()
        ids = []
        for i in range(count):
            obj = seed.stored_object(db, seed.payload(f"{case_id}-{i}"), stored_at=T0)
            ids.append(
                seed.recording(
                    db, camera, obj, recorded_at=T0 - timedelta(hours=2), ingested_at=T0, case_id=case_id
                ).id
            )
        return ids


def test_tag_sets_classification_and_a_long_term_tag_forces_the_class(
    station: Catalog, audit: AuditLog
) -> None:
    first, second = _recordings(station, 2)
    retention = RetentionConfig()
    with station.transaction() as db:
        changes = operations.tag(
            db,
            audit,
            actor=CLERK,
            now=T0,
            retention=retention,
            recording_ids=[first, second],
            case_id="A2026-17",
            case_party="王五",
            add_tags=["Mass incident"],
        )
    assert [c.changes["retention_class"] for c in changes] == [["routine", "long-term"]] * 2
    with station.transaction() as db:
        row = db.get_one(Recording, first)
        assert (row.case_id, row.case_party, row.retention_tags, row.retention_class) == (
            "A2026-17",
            "王五",
            ["mass-incident"],
            RetentionClass.LONG_TERM,
        )
        events = seed.audit_events(db, "recording.classify")
        assert [e.subject for e in events] == [f"recording:{first}", f"recording:{second}"]
        assert events[0].details["long_term_reasons"] == ["mass-incident"]
    # Lowering the class while the tag holds is refused; removing the tag alone does not lower it.
    with pytest.raises(operations.RefusedError, match="must stay long-term"), station.transaction() as s:
        operations.tag(
            s,
            audit,
            actor=CLERK,
            now=T0,
            retention=retention,
            in_case="A2026-17",
            retention_class=RetentionClass.ROUTINE,
        )
    with station.transaction() as db:
        operations.tag(
            db,
            audit,
            actor=APPROVER,
            now=T0,
            retention=retention,
            in_case="A2026-17",
            remove_tags=["mass-incident"],
        )
        assert db.get_one(Recording, first).retention_class is RetentionClass.LONG_TERM
    with (
        pytest.raises(operations.UnknownRecordingError, match="no recording with id 999"),
        station.transaction() as db,
    ):
        operations.tag(
            db, audit, actor=CLERK, now=T0, retention=retention, recording_ids=[first, 999], case_id="X"
        )


def _tag_one(station: Catalog, audit: AuditLog, actor: Actor, rec: int, **fields: Any) -> operations.Change:
    """Tag one recording in a transaction of its own."""
    with station.transaction() as db:
        [change] = operations.tag(
            db, audit, actor=actor, now=T0, retention=RetentionConfig(), recording_ids=[rec], **fields
        )
    return change


def _protection(station: Catalog, rec: int) -> tuple[Any, ...]:
    with station.transaction() as db:
        row = db.get_one(Recording, rec)
        return (row.retention_tags, row.retention_class, row.confidentiality, row.case_id)


def _classified(station: Catalog) -> int:
    with station.transaction() as db:
        return len(seed.audit_events(db, "recording.classify"))


@pytest.mark.parametrize(
    "lowering",
    [
        {"remove_tags": ["evidence"]},
        {"retention_class": RetentionClass.ROUTINE},
        {"confidentiality": Confidentiality.NORMAL},
        {"case_id": "B-1", "confidentiality": Confidentiality.NORMAL},  # one lowering field is enough
    ],
    ids=["untag", "class", "confidentiality", "mixed"],
)
def test_only_an_approver_or_admin_lowers_protection(
    station: Catalog, audit: AuditLog, lowering: dict[str, Any]
) -> None:
    (rec,) = _recordings(station, 1)
    with station.transaction() as db:
        db.get_one(Recording, rec).retention_class = RetentionClass.STANDARD
    tags = ["evidence"] if "remove_tags" in lowering else []
    _tag_one(station, audit, CLERK, rec, add_tags=tags, confidentiality=Confidentiality.PRIVACY)
    before, classified = _protection(station, rec), _classified(station)
    with pytest.raises(
        operations.LoweringNotAllowedError, match="needs the approver or admin role"
    ) as refused:
        _tag_one(station, audit, CLERK, rec, **lowering)
    assert refused.value.exit_code == 13
    assert (_protection(station, rec), _classified(station)) == (before, classified)  # nothing changed
    assert _tag_one(station, audit, APPROVER, rec, **lowering).changes
    assert _classified(station) == classified + 1


def test_raising_protection_needs_no_more_than_a_clerk(station: Catalog, audit: AuditLog) -> None:
    (rec,) = _recordings(station, 1)
    raised = _tag_one(
        station,
        audit,
        CLERK,
        rec,
        add_tags=["evidence", "note"],
        confidentiality=Confidentiality.STATE_SECRET,
    )
    assert raised.changes["confidentiality"] == ["normal", "state-secret"]
    # A tag that forces nothing comes off as it went on.
    assert _tag_one(station, audit, CLERK, rec, remove_tags=["note"]).changes["tags"][1] == ["evidence"]


def test_hold_withdraws_a_pending_notice_and_release_does_not_bring_it_back(
    station: Catalog, audit: AuditLog
) -> None:
    (rec,) = _recordings(station, 1, case_id="C1")
    with station.transaction() as db:
        db.get_one(Recording, rec).purge_notice_at = T0
    with station.transaction() as db:
        (held,) = operations.hold(
            db, audit, actor=CLERK, now=T0 + timedelta(days=1), reason="litigation", in_case="C1"
        )
    assert held.changes["purge_notice_at"] == [T0.isoformat(), None]
    with station.transaction() as db:
        (again,) = operations.hold(db, audit, actor=CLERK, now=T0, reason="x", recording_ids=[rec])
        assert again.changes == {}
        operations.release(
            db, audit, actor=CLERK, now=T0 + timedelta(days=2), reason="case closed", recording_ids=[rec]
        )
    with station.transaction() as db:
        row = db.get_one(Recording, rec)
        assert (row.legal_hold, row.hold_reason, row.purge_notice_at) == (False, None, None)
        actions = [(e.action, e.details["reason"]) for e in seed.audit_events(db)]
    assert actions == [("recording.hold", "litigation"), ("recording.release", "case closed")]
    with pytest.raises(operations.RefusedError, match="needs a reason"), station.transaction() as db:
        operations.hold(db, audit, actor=CLERK, now=T0, reason="  ", recording_ids=[rec])


def test_extend_moves_the_deadline_over_a_weekend_and_resolves_a_covered_late_flag(
    station: Catalog, audit: AuditLog
) -> None:
    friday = datetime(2026, 3, 6, 9, 0, tzinfo=UTC)  # 17:00 in Shanghai
    with station.transaction() as db:
        camera = db.scalars(select(Camera).where(Camera.device_serial == "ZFY0001")).one()
        obj = seed.stored_object(db, seed.payload("late"), stored_at=friday)
        rec = seed.recording(
            db,
            camera,
            obj,
            recorded_at=friday - timedelta(minutes=1),
            duration_s=60,
            ingested_at=friday + timedelta(days=3),
        )  # stored Monday 17:00
        flag = Flag(
            kind=FlagKind.LATE,
            dedup_key=f"late:{rec.id}",
            raised_at=rec.ingested_at,
            camera_id=camera.id,
            recording_id=rec.id,
            details={},
        )
        db.add(flag)
        db.flush()
        rec_id, flag_id = rec.id, flag.id
    admin = Actor(user="root", uid=0, role=Role.ADMIN, source="ctl:uid=0")
    with station.transaction() as db:
        result = operations.extend(
            db,
            audit,
            actor=admin,
            now=friday + timedelta(days=4),
            deadlines=DeadlinesConfig(),
            recording_id=rec_id,
            working_days=1,
            reason="remote field work, no dock",
        )
    # One working day after Friday 17:00 is Monday 17:00, not Saturday.
    assert result.deadline_at == datetime(2026, 3, 9, 9, 0, tzinfo=UTC)
    assert result.resolved_flag_ids == (flag_id,)
    with station.transaction() as db:
        row = db.get_one(Recording, rec_id)
        assert row.deadline_at == result.deadline_at
        assert row.deadline_extension_reason == "remote field work, no dock"
        assert db.get_one(Flag, flag_id).status is FlagStatus.RESOLVED
        (event,) = seed.audit_events(db, "recording.extend-deadline")
        assert (event.actor_user, event.details["working_days"], event.details["resolved_flags"]) == (
            "root",
            1,
            [flag_id],
        )
    with pytest.raises(ExtensionRefusedError, match="exceeds the maximum of 3"), station.transaction() as s:
        operations.extend(
            s,
            audit,
            actor=admin,
            now=friday,
            deadlines=DeadlinesConfig(),
            recording_id=rec_id,
            working_days=4,
            reason="x",
        )
    with pytest.raises(ExtensionRefusedError, match="reason"), station.transaction() as s:
        operations.extend(
            s,
            audit,
            actor=admin,
            now=friday,
            deadlines=DeadlinesConfig(),
            recording_id=rec_id,
            working_days=2,
            reason=" ",
        )
