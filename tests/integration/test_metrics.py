"""The metrics exposition on a real catalog: each figure counts what its help text says."""

from __future__ import annotations

from pathlib import Path

from ingestd.control.metrics import render
from store.catalog import Catalog
from store.models import SessionState
from store.types import utcnow
from tests.integration.test_bay_display import Bay, lay
from tests.support import records as rows


def scrape(catalog: Catalog, tmp_path: Path, laid: list[Bay]) -> list[str]:
    """The exposition's lines with `laid` on the docks, each bay's camera serial numbered from 1."""
    audit = rows.audit_log(tmp_path)
    for number, bay in enumerate(laid, start=1):
        bay.serial = f"ZFY{number:04d}"
        lay(catalog, audit, bay, number)
    with catalog.transaction() as db:
        return render(db, free_bytes=None, now=utcnow()).splitlines()


def test_a_camera_done_but_not_yet_taken_counts_as_docked_and_the_help_says_so(
    catalog: Catalog, tmp_path: Path
) -> None:
    laid = [
        Bay("folder:/docks/b1", "ingesting", SessionState.INGESTING),
        Bay("folder:/docks/b2", "done", SessionState.DONE, ended=True, deletion=["started", "done"]),
        Bay("folder:/docks/b3", "empty", SessionState.DONE, ended=True),  # taken
    ]
    lines = scrape(catalog, tmp_path, laid)
    assert "ingestd_docked_cameras 2" in lines
    (help_line,) = [line for line in lines if line.startswith("# HELP ingestd_docked_cameras ")]
    assert "done" in help_line
    assert "open dock sessions" not in help_line


def test_only_a_camera_copying_counts_as_ingesting_so_a_finished_one_left_docked_raises_no_stall(
    catalog: Catalog, tmp_path: Path
) -> None:
    laid = [
        Bay("folder:/docks/b1", "ingesting", SessionState.INGESTING),
        Bay("folder:/docks/b2", "done", SessionState.DONE, ended=True, deletion=["started", "done"]),
    ]
    lines = scrape(catalog, tmp_path, laid)
    assert "ingestd_docked_cameras 2" in lines
    assert "ingestd_ingesting_cameras 1" in lines
    alerts = (Path(__file__).parents[2] / "docs" / "ingestd-alerts.yml").read_text(encoding="utf-8")
    (stall,) = [line for line in alerts.splitlines() if "ingestd_ingest_bytes_total[30m]" in line]
    assert "ingestd_ingesting_cameras > 0" in stall
