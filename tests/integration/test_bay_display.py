"""The bay display's tiles on a real catalog, and its HTTP server on a real loopback socket."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ingestd import records
from ingestd.bay.server import BayDisplay, BayDisplayError
from ingestd.bay.tiles import bays
from ingestd.config import BayDisplayConfig
from ingestd.session import DELETE_ORIGINALS
from store.audit import AuditLog
from store.catalog import Catalog
from store.models import CustodyKind, Dock, SessionState
from tests.support import records as rows
from tests.support.ceph import free_port
from tests.system.harness import wait_for

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


@dataclass
class Bay:
    """How one dock is left in the catalog: its live state and its latest session."""

    port: str
    dock_state: str
    session_state: SessionState | None = None
    ended: bool = False
    officer: str = "张三"
    serial: str = "ZFY0001"
    files_failed: int = 0
    deletion: list[str] = field(default_factory=list)  # camera.delete-originals outcomes on record
    bytes_done: int = 0
    bytes_total: int = 0


def lay(catalog: Catalog, audit: AuditLog, bay: Bay, number: int) -> None:
    with catalog.transaction() as session:
        if bay.session_state is None:
            records.get_or_create_dock(session, bay.port, NOW)
        else:
            dock_session = records.open_dock_session(session, bay.port, NOW)
            officer = rows.officer(session, f"{number:06d}", bay.officer)
            camera = rows.camera(session, bay.serial, assigned=officer, first_seen_at=NOW)
            dock_session.camera_id = camera.id
            dock_session.state = bay.session_state
            dock_session.battery_percent = 70 + number
            dock_session.files_total, dock_session.files_done = 3, 3 - bay.files_failed
            dock_session.files_failed = bay.files_failed
            dock_session.ended_at = NOW if bay.ended else None
            records.custody_event(
                session,
                audit,
                camera=camera,
                kind=CustodyKind.CHECK_IN,
                officer=officer,
                actor=records.daemon_actor(bay.port),
                now=NOW,
                dock_session=dock_session,
            )
            for outcome in bay.deletion:
                audit.append(
                    session,
                    actor=records.daemon_actor(bay.port),
                    action=DELETE_ORIGINALS,
                    subject=f"dock_session:{dock_session.id}",
                    outcome=outcome,
                    at=NOW,
                    details={"camera": bay.serial},
                )
        dock = session.scalars(select(Dock).where(Dock.port == bay.port)).one()
        dock.state, dock.bytes_done, dock.bytes_total = bay.dock_state, bay.bytes_done, bay.bytes_total


def test_each_tile_shows_its_current_session_and_safe_only_after_proof_and_deletion(
    catalog: Catalog, tmp_path: Path
) -> None:
    audit = rows.audit_log(tmp_path)
    laid = [
        Bay("folder:/docks/b1", "ingesting", SessionState.INGESTING, officer="<b>李四</b>", serial="ZFY0101"),
        Bay("folder:/docks/b2", "done", SessionState.DONE, ended=True, deletion=["started", "done"]),
        Bay("folder:/docks/b3", "done", SessionState.DONE, ended=True, deletion=["started"]),
        Bay("folder:/docks/b4", "done", SessionState.DONE, ended=True, files_failed=1),
        Bay("folder:/docks/b5", "empty", SessionState.DONE, ended=True, deletion=["started", "done"]),
        Bay("folder:/docks/b6", "queued", SessionState.DONE, ended=True, officer="王五"),
        Bay("folder:/docks/b7", "failed", SessionState.FAILED, ended=True),
        # Every byte copied is no proof: the session has not ended.
        Bay("folder:/docks/b8", "ingesting", SessionState.INGESTING, bytes_done=100, bytes_total=100),
        Bay("/devices/pci0000:00/0000:00:14.0/usb1/1-4", "empty"),
    ]
    for number, bay in enumerate(laid, start=1):
        bay.serial = bay.serial if bay.serial != "ZFY0001" else f"ZFY{number:04d}"
        lay(catalog, audit, bay, number)
    with catalog.transaction() as session:
        tiles = {tile["name"]: tile for tile in bays(session)}
    assert {name: (tile["phase"], tile["words"]) for name, tile in tiles.items()} == {
        "b1": ("working", "copying"),
        "b2": ("safe", "done, safe to undock"),
        "b3": ("attention", "clearing the camera did not finish: see the station operator"),
        "b4": ("attention", "1 file(s) not stored: see the station operator"),
        "b5": ("idle", "free"),
        "b6": ("working", "waiting for a free slot"),
        "b7": ("attention", "stopped: see the station operator"),
        "b8": ("working", "copying"),
        "1-4": ("idle", "free"),
    }
    assert (tiles["b1"]["officer"], tiles["b1"]["serial"]) == ("<b>李四</b>", "ZFY0101")  # literal
    assert (tiles["b2"]["percent"], tiles["b2"]["battery_percent"]) == (100.0, 72)
    assert tiles["b8"]["percent"] == 100.0
    # No other officer's history: a free bay and a newly queued camera show no earlier name.
    for name in ("b5", "b6", "1-4"):
        assert (tiles[name]["officer"], tiles[name]["serial"], tiles[name]["battery_percent"]) == (
            None,
            None,
            None,
        )


@contextmanager
def serving(catalog: Catalog, **config: Any) -> Iterator[BayDisplay]:
    display = BayDisplay(
        catalog, BayDisplayConfig(listen=f"127.0.0.1:{free_port()}", **config), keepalive_s=0.2
    )
    display.start()
    try:
        yield display
    finally:
        display.stop()


def get(
    display: BayDisplay, path: str, host: str | None = None, method: str = "GET"
) -> tuple[int, Any, bytes]:
    """Status, headers and body of one request."""
    request = urllib.request.Request(f"http://127.0.0.1:{display.port}{path}", method=method)
    if host is not None:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - http to our own server
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


class Stream:
    """A raw event-stream client, so a test can drop it without a goodbye."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.socket.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.reader = self.socket.makefile("rb")
        self.status = int(self.reader.readline().split()[1])
        while self.reader.readline() not in (b"\r\n", b""):
            pass

    def next_data(self) -> dict[str, Any]:
        while True:
            line = self.reader.readline()
            assert line, "the stream ended"
            if line.startswith(b"data: "):
                parsed: dict[str, Any] = json.loads(line[6:])
                return parsed

    def close(self) -> None:
        self.reader.close()
        self.socket.close()


def test_serves_only_its_read_only_page_and_refuses_a_dns_name(sqlite_catalog: Catalog) -> None:
    with serving(sqlite_catalog) as display:
        status, headers, page = get(display, "/")
        assert status == 200
        assert "script-src 'self'" in headers["Content-Security-Policy"]  # nothing inline runs
        assert b'<main id="bays"' in page
        assert get(display, "/bay.js")[0] == 200
        assert get(display, "/footage")[0] == 404
        assert get(display, "/", method="POST")[0] == 501
        assert get(display, "/", host="evil.example:8947")[0] == 421  # DNS rebinding
        assert get(display, "/", host="localhost:8947")[0] == 200


def one_copying_bay(catalog: Catalog, tmp_path: Path) -> None:
    lay(catalog, rows.audit_log(tmp_path), Bay("folder:/docks/b1", "ingesting", SessionState.INGESTING), 1)


def test_streams_are_bounded_and_one_that_goes_away_frees_its_thread(
    sqlite_catalog: Catalog, tmp_path: Path
) -> None:
    one_copying_bay(sqlite_catalog, tmp_path)
    baseline = threading.active_count()
    with serving(sqlite_catalog, max_clients=2) as display:
        first, second = Stream(display.port), Stream(display.port)
        assert (first.status, second.status) == (200, 200)
        assert first.next_data()["tiles"][0]["name"] == "b1"
        third = Stream(display.port)
        assert third.status == 503
        third.close()
        first.close()  # gone without a word: the next keep-alive write fails
        wait_for("the departed stream to end", lambda: display.streams == 1, timeout=10)
        again = Stream(display.port)
        assert again.status == 200
        for stream in (second, again):
            stream.close()
        wait_for("every stream to end", lambda: display.streams == 0, timeout=10)
        wait_for(
            "the stream threads to end",
            lambda: threading.active_count() <= baseline + 2,  # the poller and the accept loop
            timeout=10,
        )


def test_a_change_reaches_the_stream_and_stop_ends_open_streams(
    sqlite_catalog: Catalog, tmp_path: Path
) -> None:
    one_copying_bay(sqlite_catalog, tmp_path)
    display = BayDisplay(
        sqlite_catalog, BayDisplayConfig(listen=f"127.0.0.1:{free_port()}")
    )  # keep-alive 15 s
    display.start()
    try:
        stream = Stream(display.port)
        assert stream.next_data()["tiles"][0]["phase"] == "working"
        with sqlite_catalog.transaction() as session:
            dock = session.scalars(select(Dock)).one()
            dock.bytes_done, dock.bytes_total = 1, 4
        assert stream.next_data()["tiles"][0]["percent"] == 25.0
    finally:
        display.stop(timeout=5)
    assert display.streams == 0
    assert stream.reader.read().strip() == b""  # nothing more, then the end: the server closed it
    stream.close()


def test_a_taken_address_is_one_clear_error_naming_the_key(sqlite_catalog: Catalog) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        display = BayDisplay(sqlite_catalog, BayDisplayConfig(listen=listen))
        with pytest.raises(BayDisplayError) as caught:
            display.start()
    assert str(caught.value) == f"bay_display.listen {listen}: cannot listen: Address already in use"
    assert caught.value.exit_code == 74
