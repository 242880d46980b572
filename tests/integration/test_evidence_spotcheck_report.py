"""Spot-check ledger and statistics reports on real catalogs (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ingestd.control.handlers_evidence import report, spotcheck_sample, spotcheck_show, spotcheck_verdict
from ingestd.control.registry import Request
from ingestd.evidence.errors import EvidenceUsageError
from store.audit import Actor
from store.catalog import Catalog
from store.models import AuditEvent, ClockReading, Flag, FlagKind
from tests.support.evidence import AUDITOR, NOW, World, make_services
from tests.support.objectstore import unseal_tree

MARCH = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
FEBRUARY = datetime(2026, 2, 20, 2, 0, tzinfo=UTC)


@pytest.fixture
def world(catalog: Catalog, tmp_path: Path) -> Iterator[World]:
    w = World(make_services(catalog, tmp_path))
    w.unit("110105000000", "朝阳分局")
    w.unit("110106000000", "丰台分局")
    w.officer("000123", "张三", "110105000000")
    w.officer("000456", "李四", "110106000000")
    w.camera("ZFY0001", "110105000000", "000123", battery=80)
    w.camera("ZFY0002", "110106000000", "000456", battery=15)
    try:
        yield w
    finally:
        unseal_tree(tmp_path)


def call(world: World, handler: Any, /, actor: Actor = AUDITOR, **args: Any) -> Any:
    return handler(world.services, Request(command=handler.__name__, args=args, actor=actor, now=NOW))


# --- spot checks ---------------------------------------------------------------------------------------


def test_a_spotcheck_sample_is_reproducible_and_its_verdicts_are_ledgered(world: World) -> None:
    unit1 = [world.recording("ZFY0001", "000123", MARCH + timedelta(hours=i)) for i in range(20)]
    unit2 = [world.recording("ZFY0002", "000456", MARCH + timedelta(hours=i)) for i in range(5)]
    world.recording("ZFY0001", "000123", FEBRUARY)  # outside the period

    first = call(world, spotcheck_sample, unit_no="110105000000", month="2026-03", size=5, seed="2026Q1")
    again = call(world, spotcheck_sample, unit_no="110105000000", month="2026-03", size=5, seed="2026Q1")
    other = call(world, spotcheck_sample, unit_no="110105000000", month="2026-03", size=5, seed="another")
    sample = [i["recording_id"] for i in first["items"]]
    assert sample == [i["recording_id"] for i in again["items"]]
    assert sample != [i["recording_id"] for i in other["items"]]
    assert len(set(sample)) == 5
    assert set(sample) <= set(unit1)
    assert (first["seed"], first["population"], first["sample_size"]) == ("2026Q1", 20, 5)

    everyone = call(world, spotcheck_sample, month="2026-03", size=25)
    assert len(everyone["seed"]) == 32  # generated, stored and shown
    assert {i["recording_id"] for i in everyone["items"]} == set(unit1) | set(unit2)

    ledger = call(world, spotcheck_verdict, inspection_id=first["id"], recording_id=sample[0], verdict="pass")
    ledger = call(
        world,
        spotcheck_verdict,
        inspection_id=first["id"],
        recording_id=sample[1],
        verdict="fail",
        notes="执法记录仪未全程开启",
    )
    assert ledger["summary"] == {"pass": 1, "fail": 1, "pending": 3}
    with pytest.raises(EvidenceUsageError, match="--amend"):
        call(world, spotcheck_verdict, inspection_id=first["id"], recording_id=sample[1], verdict="pass")
    call(
        world,
        spotcheck_verdict,
        inspection_id=first["id"],
        recording_id=sample[1],
        verdict="pass",
        notes="explained",
        amend=True,
    )
    with pytest.raises(EvidenceUsageError, match="not in the sample"):
        call(world, spotcheck_verdict, inspection_id=first["id"], recording_id=unit2[0], verdict="pass")
    with pytest.raises(EvidenceUsageError, match="pass or fail"):
        call(world, spotcheck_verdict, inspection_id=first["id"], recording_id=sample[2], verdict="ok")

    shown = call(world, spotcheck_show, inspection_id=first["id"])
    assert shown["reproduces"] is True
    assert shown["items"][1]["verdict"] == "pass"
    assert shown["items"][1]["reviewed_by"] == "zhao.auditor"
    listed = call(world, spotcheck_show)["inspections"]
    assert [i["id"] for i in listed][-1] == first["id"]
    assert listed[-1]["reviewed"] == 2

    with world.services.catalog.transaction() as db:
        verdicts = db.scalars(
            select(AuditEvent).where(AuditEvent.action == "spotcheck.verdict").order_by(AuditEvent.seq)
        ).all()
    assert verdicts[-1].details["previous"] == "fail"


def test_spotcheck_arguments_are_checked(world: World) -> None:
    world.recording("ZFY0001", "000123", MARCH)
    with pytest.raises(EvidenceUsageError, match="no unit"):
        call(world, spotcheck_sample, unit_no="999", month="2026-03")
    with pytest.raises(EvidenceUsageError, match="no recordings"):
        call(world, spotcheck_sample, month="2025-01")
    with pytest.raises(EvidenceUsageError, match="YYYY-MM"):
        call(world, spotcheck_sample, month="2026-13")
    with pytest.raises(EvidenceUsageError, match="before"):
        call(world, spotcheck_sample, AUDITOR, **{"from": "2026-03-10", "to": "2026-03-01"})
    with pytest.raises(EvidenceUsageError, match="no inspection"):
        call(world, spotcheck_show, inspection_id=42)


# --- reports -------------------------------------------------------------------------------------------


def _flag(
    world: World,
    kind: FlagKind,
    key: str,
    at: datetime,
    *,
    camera: str,
    recording: int | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    with world.services.catalog.transaction() as db:
        db.add(
            Flag(
                kind=kind,
                dedup_key=key,
                raised_at=at,
                camera_id=world.cameras[camera],
                recording_id=recording,
                details=details or {},
            )
        )


def _reading(world: World, camera: str, at: datetime, offset: float) -> None:
    with world.services.catalog.transaction() as db:
        db.add(ClockReading(camera_id=world.cameras[camera], measured_at=at, offset_s=offset, state="synced"))


def test_report_aggregates_per_unit_officer_and_period(world: World) -> None:
    a = world.recording("ZFY0001", "000123", MARCH, duration_s=60)
    b = world.recording("ZFY0001", "000123", MARCH + timedelta(hours=1), duration_s=120, late=True)
    world.recording("ZFY0001", "000123", MARCH + timedelta(hours=2), duration_s=None)
    c = world.recording("ZFY0002", "000456", MARCH, duration_s=600, late=True)
    world.recording("ZFY0002", "000456", MARCH + timedelta(days=3), duration_s=600)
    old = world.recording("ZFY0001", "000123", FEBRUARY, duration_s=6000, late=True)
    _flag(world, FlagKind.GAP, "gap-b", MARCH, camera="ZFY0001", recording=b)
    _flag(world, FlagKind.INTERRUPTED, "int-c", MARCH, camera="ZFY0002", recording=c)
    _flag(world, FlagKind.GAP, "gap-old", FEBRUARY, camera="ZFY0001", recording=old)
    _flag(world, FlagKind.LATE, "late-a", MARCH, camera="ZFY0001", recording=a)  # not a gap
    _flag(
        world,
        FlagKind.OVERDUE,
        "over-2",
        MARCH + timedelta(days=2),
        camera="ZFY0002",
        details={"holder_officer_no": "000456"},
    )
    _flag(
        world,
        FlagKind.OVERDUE,
        "over-old",
        FEBRUARY,
        camera="ZFY0001",
        details={"holder_officer_no": "000123"},
    )
    _reading(world, "ZFY0001", MARCH, 2.0)
    _reading(world, "ZFY0001", MARCH + timedelta(days=1), -4.0)
    _reading(world, "ZFY0002", MARCH, 10.0)
    _reading(world, "ZFY0002", FEBRUARY, 100.0)

    result = call(world, report, month="2026-03")
    assert result["period"]["start"] == "2026-02-28T16:00:00+00:00"  # local month, Asia/Shanghai
    unit1 = {
        "recordings": 3,
        "bytes": 3 * 4096,
        "hours": 0.05,
        "hours_known_for": 2,
        "late": 1,
        "late_pct": 33.33,
        "gaps": 1,
        "interrupted": 0,
        "overdue": 0,
        "cameras": 1,
        "battery_avg_pct": 80.0,
        "battery_min_pct": 80,
        "low_battery_cameras": 0,
        "drift_readings": 2,
        "drift_avg_abs_s": 3.0,
        "drift_max_abs_s": 4.0,
    }
    unit2 = {
        "recordings": 2,
        "bytes": 2 * 4096,
        "hours": 0.333,
        "hours_known_for": 2,
        "late": 1,
        "late_pct": 50.0,
        "gaps": 0,
        "interrupted": 1,
        "overdue": 1,
        "cameras": 1,
        "battery_avg_pct": 15.0,
        "battery_min_pct": 15,
        "low_battery_cameras": 1,
        "drift_readings": 1,
        "drift_avg_abs_s": 10.0,
        "drift_max_abs_s": 10.0,
    }
    assert result["by_unit"] == [
        {"unit_no": "110105000000", "unit_name": "朝阳分局", **unit1},
        {"unit_no": "110106000000", "unit_name": "丰台分局", **unit2},
    ]
    assert result["by_officer"] == [
        {"officer_no": "000123", "officer_name": "张三", **unit1},
        {"officer_no": "000456", "officer_name": "李四", **unit2},
    ]
    assert result["totals"] == {
        "recordings": 5,
        "bytes": 5 * 4096,
        "hours": 0.383,
        "hours_known_for": 4,
        "late": 2,
        "late_pct": 40.0,
        "gaps": 1,
        "interrupted": 1,
        "overdue": 1,
        "cameras": 2,
        "battery_avg_pct": 47.5,
        "battery_min_pct": 15,
        "low_battery_cameras": 1,
        "drift_readings": 3,
        "drift_avg_abs_s": 5.333,
        "drift_max_abs_s": 10.0,
    }
    only = call(
        world,
        report,
        AUDITOR,
        **{"from": "2026-03-01", "to": "2026-03-02"},
        unit_no="110106000000",
        by="unit",
    )
    assert "by_officer" not in only
    assert [r["recordings"] for r in only["by_unit"]] == [1]
    assert only["totals"]["recordings"] == 1
    with pytest.raises(EvidenceUsageError, match="--by"):
        call(world, report, month="2026-03", by="camera")
