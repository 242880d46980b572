"""Lateness at ingest counts from the end of each recording (its mvhd start plus duration)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from drivers.mp4 import write_mp4
from ingestd.importer import run_import
from ingestd.jobs import evaluate_after_session
from ingestd.services import Services
from ingestd.session import IngestSettings
from store.models import Flag, FlagKind, Recording
from tests.support.station import open_station


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    with open_station(tmp_path) as opened:
        yield opened


def test_a_long_recording_that_ended_within_the_window_is_on_time(services: Services, tmp_path: Path) -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    card = tmp_path / "card"
    card.mkdir()
    # Started 24 h 5 min ago but ran 10 min: it ended 23 h 55 min ago, so it is on time.
    write_mp4(
        card / "LONG.MP4", created_at=now - timedelta(hours=24, minutes=5), payload_size=4096, duration_s=600
    )
    # Started 24 h 2 min ago and ran 1 min: it ended 24 h 1 min ago, so it is late by a minute.
    write_mp4(
        card / "SHORT.MP4", created_at=now - timedelta(hours=24, minutes=2), payload_size=4096, duration_s=60
    )
    summary = run_import(
        services, card, device_id="ZFY0100", officer_no=None, settings=IngestSettings(), clock=lambda: now
    )
    assert summary.late == 1
    with services.catalog.transaction() as db:
        rows = {r.original_path: r for r in db.scalars(select(Recording)).all()}
        assert rows["LONG.MP4"].duration_s == 600
        assert rows["LONG.MP4"].deadline_at == now + timedelta(minutes=5)
        late = db.scalars(select(Flag).where(Flag.kind == FlagKind.LATE)).one()
        assert late.recording_id == rows["SHORT.MP4"].id
        assert late.details["lateness_s"] == 60


def test_a_cut_off_recording_is_stored_and_flagged_as_needing_an_explanation(
    services: Services, tmp_path: Path
) -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    card = tmp_path / "card"
    card.mkdir()
    write_mp4(
        card / "ZFY0101_20261122_180000_0001.MP4",
        created_at=now - timedelta(hours=2),
        payload_size=4096,
        duration_s=60,
    )
    # Power lost mid-recording: the camera wrote media but never the moov box that closes the file.
    (card / "ZFY0101_20261122_183000_0002.MP4").write_bytes(b"\x00\x00\x10\x08mdat" + bytes(4096))
    summary = run_import(
        services, card, device_id="ZFY0101", officer_no=None, settings=IngestSettings(), clock=lambda: now
    )
    assert summary.files == 2
    with services.catalog.transaction() as db:
        cut = db.scalars(select(Recording).where(Recording.interruption.is_not(None))).one()
        assert cut.original_path.endswith("_0002.MP4")
        assert cut.recorded_at_source == "filename"
        dock_session_id = cut.dock_session_id
    assert dock_session_id is not None
    evaluate_after_session(
        services.catalog, dock_session_id, services.config, now, notifier=services.flag_notifier
    )
    evaluate_after_session(
        services.catalog, dock_session_id, services.config, now, notifier=services.flag_notifier
    )  # idempotent
    with services.catalog.transaction() as db:
        (flag,) = db.scalars(select(Flag).where(Flag.kind == FlagKind.INTERRUPTED)).all()
        assert flag.recording_id == cut.id
        assert flag.details["cause"] == "unfinalized container"
