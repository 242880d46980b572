"""What ingestctl shows an operator, read from the real command on a real terminal and in a pipe."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from typing import Any

from rich.cells import cell_len
from sqlalchemy import select

from ingestd.control.client import call
from store.catalog import Catalog
from store.models import Camera, Flag, FlagKind
from tests.support.terminal import on_terminal
from tests.system.harness import Daemon, SimulatedCamera, wait_for
from tests.system.test_control import CTL, ctl
from tests.system.test_ctl_records import LONG_AGO, seeded

OFFICERS = {"ZFY0701": "王五", "ZFY0702": "Li Na", "ZFY0703": "赵六", "ZFY0704": "Chen Jie"}
LONG_OFFICER = "Alexandria Montgomery-Smithson"  # cut on a terminal, whole in a pipe
LABELS = {"ZFY0701": "Bay 1", "ZFY0702": "Bay 2"}  # the other two show their short name


def _docks(daemon: Daemon) -> dict[str, dict[str, Any]]:
    return {dock["device_serial"]: dock for dock in call(daemon.control_socket, "status", {})["docks"]}


def test_status_fits_80x24_one_line_per_dock_labelled_and_keeps_camera_officer_and_rate_when_done(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera]
) -> None:
    docks = "".join(
        f'\n[[dock]]\nport = "folder:{daemon.docks / serial}"\nlabel = "{label}"\n'
        for serial, label in LABELS.items()
    )
    daemon.extra_config = "\n[ingest]\ndelete_after_ingest = false\n" + docks
    daemon.start()
    everyone = {**OFFICERS, "ZFY0705": LONG_OFFICER}
    cameras = {
        serial: make_camera(serial, officer_no=f"0007{index:02d}", officer_name=name, files=2)
        for index, (serial, name) in enumerate(everyone.items())
    }
    for camera in cameras.values():
        camera.dock(daemon.docks)

    def all_done() -> dict[str, dict[str, Any]] | None:
        shown = _docks(daemon)
        finished = set(shown) == set(everyone) and all(d["state"] == "done" for d in shown.values())
        return shown if finished and all(d["rate_bps"] for d in shown.values()) else None

    done = wait_for("every camera done", all_done, timeout=120, interval=0.2)
    assert {serial: dock["label"] for serial, dock in done.items()} == {
        **LABELS,
        "ZFY0703": "ZFY0703",
        "ZFY0704": "ZFY0704",
        "ZFY0705": "ZFY0705",
    }

    code, lines = on_terminal([sys.executable, "-c", CTL, "status", "--config", str(daemon.config_path)])
    assert code == 0, lines
    assert len(lines) <= 24, lines
    assert all(cell_len(line) <= 80 for line in lines), lines
    for serial, officer in OFFICERS.items():
        label = LABELS.get(serial, serial)  # a folder dock's short name: its subdirectory
        rows = [line for line in lines if serial in line]
        assert len(rows) == 1, (serial, lines)  # one line per dock, never wrapped
        assert rows[0].lstrip().startswith(f"{label} "), rows[0]
        for shown in (officer, "done"):
            assert shown in rows[0], (shown, rows[0])
        assert "/s" in rows[0], rows[0]  # the copy's rate stays once it is done
    assert not any("/devices/" in line or "folder:/" in line for line in lines), lines
    (long_row,) = [line for line in lines if "ZFY0705" in line]
    for shown in ("Alexandria", "…", "done"):  # cut at a readable width, the rest of the row intact
        assert shown in long_row, (shown, long_row)

    # The rate is frozen, not decaying while the camera waits to be taken.
    before = {serial: dock["rate_bps"] for serial, dock in done.items()}
    wait_for(
        "two more progress flushes",
        lambda: _docks(daemon)["ZFY0701"]["updated_at"] != done["ZFY0701"]["updated_at"],
        timeout=10,
    )
    assert {serial: dock["rate_bps"] for serial, dock in _docks(daemon).items()} == before

    cameras["ZFY0703"].undock(daemon.docks)
    wait_for(
        "the undocked dock's row to go",
        lambda: "ZFY0703" not in _docks(daemon) and len(_docks(daemon)) == 4,
        timeout=60,
    )
    piped = ctl(daemon, "status")
    assert piped.returncode == 0, piped.stderr
    assert "ZFY0703" not in piped.stdout
    assert [line for line in piped.stdout.splitlines() if "Bay 1" in line and "ZFY0701" in line]
    assert [line for line in piped.stdout.splitlines() if LONG_OFFICER in line and "ZFY0705" in line]
    assert "…" not in piped.stdout  # a pipe gets every cell whole
    shown = json.loads(ctl(daemon, "status", "--json").stdout)
    labels = sorted(dock["label"] for dock in shown["docks"])
    assert labels == ["Bay 1", "Bay 2", "ZFY0704", "ZFY0705"]


def test_audit_shows_the_newest_first_says_how_to_page_and_an_empty_list_says_none(daemon: Daemon) -> None:
    daemon.start()
    for _ in range(7):
        assert ctl(daemon, "footage").returncode == 0  # each search is audited
    chain = [event["seq"] for event in json.loads(ctl(daemon, "audit", "--json").stdout)]
    assert chain == sorted(chain)  # exports stay in chain order
    assert len(chain) > 4

    first = ctl(daemon, "audit", "--limit", "3")
    assert first.returncode == 0, first.stderr
    newest = sorted(chain)[-3:][::-1]
    assert _seqs(first.stdout) == newest
    assert first.stdout.splitlines()[-1] == f"more: --before {newest[-1]}"
    second = ctl(daemon, "audit", "--limit", "3", "--before", str(newest[-1]))
    assert _seqs(second.stdout) == sorted(chain)[-6:-3][::-1]

    # A terminal shows station time with its zone, JSON ISO 8601 UTC; an empty list says so on both.
    argv = [sys.executable, "-c", CTL, "audit", "--limit", "1", "--config", str(daemon.config_path)]
    code, lines = on_terminal(argv, columns=200)
    assert code == 0, lines
    (row,) = [line for line in lines if f"│ {newest[0]} " in line]
    assert re.search(r"│ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d CST │", row), row
    newest_json = json.loads(ctl(daemon, "audit", "--json").stdout)[-1]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", newest_json["time"])
    code, lines = on_terminal([*argv[:-2], "--action", "no.such.event", *argv[-2:]])
    assert (code, lines) == (0, ["Audit trail (newest first): none"])

    empty = ctl(daemon, "audit", "--action", "no.such.event")
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.strip() == "Audit trail (newest first): none"
    assert json.loads(ctl(daemon, "audit", "--json", "--action", "no.such.event").stdout) == []
    refused = ctl(daemon, "audit", "--format", "csv", "--before", "3")
    assert refused.returncode == 2
    assert "--before pages the table" in refused.stderr


def _seqs(table: str) -> list[int]:
    """The seq column of a piped audit table (its rows start with a border, then the seq)."""
    return [int(line.split("│")[1]) for line in table.splitlines() if line.startswith("│")]


def test_flags_say_what_each_is_about_and_explain_takes_the_id_as_printed(daemon: Daemon) -> None:
    facts = seeded(daemon)  # one gap flag of 900 s, on a recording of camera ZFY0001
    catalog = Catalog.open(daemon.catalog_url)
    try:
        with catalog.transaction() as session:
            camera_id = session.scalar(select(Camera.id).where(Camera.device_serial == "ZFY0001"))
            for kind, key, details in (
                (FlagKind.FAILED_FILE, "f1", {"file": "DCIM/A.MP4", "reason": "read error: EIO"}),
                (FlagKind.FAILED_FILE, "f2", {"file": "DCIM/B.MP4", "reason": "a symbolic link"}),
                (FlagKind.LATE, "l1", {"deadline_at": "2024-01-09T01:00:00Z", "late_by_s": 3900.0}),
                (FlagKind.DRIFT, "d1", {"offset_s": 45.25, "bound_s": 30.0}),
            ):
                session.add(
                    Flag(kind=kind, dedup_key=key, raised_at=LONG_AGO, camera_id=camera_id, details=details)
                )
    finally:
        catalog.close()
    daemon.start()

    shown = ctl(daemon, "flags")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    for about in (
        "DCIM/A.MP4: read error: EIO",
        "DCIM/B.MP4: a symbolic link",
        "late by 1 h 05 min (deadline 2024-01-09 09:00:00 CST)",
        "clock offset +45.2 s (bound 30 s)",
        "gap of 15 min 00 s",
    ):
        assert len([line for line in lines if about in line]) == 1, (about, shown.stdout)
    assert "raised 2024-01-10 10:00:00 CST" in lines[0]  # station time, with its zone

    gap = facts["flag"]
    explained = ctl(daemon, "explain", f"#{gap}", "--text", "battery swap")
    assert explained.returncode == 0, explained.stderr
    assert explained.stdout.startswith(f"#{gap}  explained")
    for bad in ("#", "#x", "8#", "0"):
        refused = ctl(daemon, "explain", bad, "--text", "t")
        assert refused.returncode == 2, (bad, refused.stderr)
        assert "is not a flag id" in refused.stderr, (bad, refused.stderr)
        assert "Traceback" not in refused.stderr
    for flag in json.loads(ctl(daemon, "flags", "--json").stdout):
        assert ctl(daemon, "explain", str(flag["id"]), "--text", "seen").returncode == 0
    empty = ctl(daemon, "flags")
    assert empty.stdout == "open flags: none\n"
    assert json.loads(ctl(daemon, "flags", "--json").stdout) == []


def test_an_admin_asking_to_approve_is_told_it_is_separation_of_duties(daemon: Daemon) -> None:
    daemon.start()  # root: the admin role, and no approver group
    refused = ctl(
        daemon, "approve", "--for", "nobody", "--purpose", "court", "--recording", "1", "--expires-in", "7d"
    )
    assert refused.returncode == 13, refused.stderr
    (line,) = refused.stderr.splitlines()
    assert "approve needs one of the roles approver; root has admin" in line
    assert "separation of duties: admin does not include approve; only approver may" in line
