"""What a camera says about itself is a claim: a real ingest session (`ingestd import`) on a real SQLite
catalog and object store, with the identity file the camera's volume carries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from drivers.simulator.volume import build_volume
from ingestd.importer import run_import
from ingestd.operations import UnknownOfficerError
from ingestd.services import Services
from ingestd.session import IngestSettings
from store.models import Flag, FlagKind, Officer, Recording
from store.types import utcnow
from tests.integration.test_session_deadlines import services

__all__ = ["services"]  # the fixture: a station on a real SQLite catalog and object store


def card(tmp_path: Path, name: str, *, serial: str, officer_no: str, officer_name: str, seed: int) -> Path:
    root = tmp_path / name
    build_volume(
        root,
        device_serial=serial,
        officer_no=officer_no,
        officer_name=officer_name,
        count=1,
        size_bytes=4096,
        start=datetime.now(UTC) - timedelta(hours=2),
        seed=seed,
    )
    return root


def ingest(services: Services, volume: Path, device_id: str, officer_no: str | None = None) -> None:
    run_import(
        services, volume, device_id=device_id, officer_no=officer_no, settings=IngestSettings(), clock=utcnow
    )


def mismatches(services: Services) -> list[dict[str, object]]:
    with services.catalog.transaction() as db:
        flags = db.scalars(select(Flag).where(Flag.kind == FlagKind.IDENTITY_MISMATCH).order_by(Flag.id))
        return [dict(flag.details) for flag in flags]


def test_an_identity_file_that_disagrees_with_the_usb_serial_is_flagged(
    services: Services, tmp_path: Path
) -> None:
    volume = card(tmp_path, "card", serial="ZFY9001", officer_no="000101", officer_name="张三", seed=1)
    ingest(services, volume, device_id="ZFY9002")  # what the USB layer says the device is
    [flag] = mismatches(services)
    assert (flag["device_serial"], flag["usb_serial"], flag["source"]) == (
        "ZFY9001",
        "ZFY9002",
        "identity-file",
    )


def test_a_known_officer_is_never_renamed_by_a_camera_and_their_footage_keeps_its_officer(
    services: Services, tmp_path: Path
) -> None:
    first = card(tmp_path, "first", serial="ZFY9003", officer_no="000101", officer_name="张三", seed=2)
    ingest(services, first, device_id="ZFY9003")
    assert mismatches(services) == []
    claim = card(tmp_path, "claim", serial="ZFY9004", officer_no="000101", officer_name="李鬼", seed=3)
    ingest(services, claim, device_id="ZFY9004")
    ingest(services, claim, device_id="ZFY9004")  # the same claim again: still one flag
    with services.catalog.transaction() as db:
        officer = db.scalars(select(Officer).where(Officer.officer_no == "000101")).one()
        assert officer.name == "张三"
        names = {r.officer.name for r in db.scalars(select(Recording)) if r.officer is not None}
        assert names == {"张三"}
    [flag] = mismatches(services)
    assert (flag["officer_no"], flag["officer_name_registered"], flag["officer_name_reported"]) == (
        "000101",
        "张三",
        "李鬼",
    )
    assert flag["device_serial"] == "ZFY9004"


def test_import_refuses_an_officer_the_registry_does_not_know(services: Services, tmp_path: Path) -> None:
    volume = card(tmp_path, "card", serial="ZFY9005", officer_no="000101", officer_name="张三", seed=4)
    with pytest.raises(UnknownOfficerError, match="no officer with number '000999'") as refused:
        ingest(services, volume, device_id="ZFY9005", officer_no="000999")
    assert refused.value.exit_code == 2
    with services.catalog.transaction() as db:
        assert db.scalars(select(Officer)).all() == []
        assert db.scalars(select(Recording)).all() == []
    ingest(services, volume, device_id="ZFY9005")  # registers 000101 from the camera
    ingest(
        services,
        card(tmp_path, "again", serial="ZFY9005", officer_no="", officer_name="", seed=5),
        "ZFY9005",
        "000101",
    )
    with services.catalog.transaction() as db:
        assert {r.officer.officer_no for r in db.scalars(select(Recording)) if r.officer} == {"000101"}
    assert mismatches(services) == []
