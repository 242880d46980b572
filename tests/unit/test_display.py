"""Camera- and bag-supplied text reaches the terminal literally: rich never reads it as markup."""

from __future__ import annotations

import io
from zoneinfo import ZoneInfo

from rich.console import Console

from ingestd.ctl.read import status_view
from ingestd.display import table

HOSTILE = "x[/red].mp4"  # a closing tag that matches nothing: rich's markup parser raises on it
STYLED = "[bold]案[/bold]"


def rendered(renderable: object) -> str:
    out = io.StringIO()
    Console(file=out, width=400, color_system=None).print(renderable)
    return out.getvalue()


def test_a_status_view_shows_hostile_serials_and_file_names_as_they_are() -> None:
    dock = {
        "port": "/devices/usb1/1-2",
        "label": f"usb-{STYLED}",
        "device_serial": HOSTILE,
        "officer_name": HOSTILE,
        "state": "copying",
        "current_file": f"DCIM/{HOSTILE}",
        "bytes_total": 100,
        "bytes_done": 50,
        "rate_bps": 10.0,
        "eta_s": 5.0,
    }
    result = {
        "docks": [dock],
        "open_flags": {},
        "last_verify": None,
        "store": {"free_bytes": 1, "root": f"/srv/{STYLED}"},
        "queued": 0,
        "served_by": "daemon",
    }
    text = rendered(status_view(result, ZoneInfo("UTC")))
    for literal in (HOSTILE, f"DCIM/{HOSTILE}", f"usb-{STYLED}", f"/srv/{STYLED}"):
        assert literal in text


def test_every_table_cell_is_literal_and_empty_cells_say_so() -> None:
    text = rendered(table("t", ["a", "b", "c"], [[HOSTILE, None, STYLED]], empty="-"))
    assert HOSTILE in text
    assert STYLED in text
    assert " - " in text
