"""What `ingestctl` prints through rich: data never reaches the markup parser, and a pipe gets it whole.

Camera file names, officer names, bag contents and paths can hold `[`; rich would read `x[/red].mp4` as
markup and fail (or restyle the line). Everything that is not our own literal goes through here.
Piped (grep, a file, a mail), rich would assume 80 columns and cut cells to `ZFY0…` or wrap a PROBLEM
line in two; `console()` gives every line the width it needs there instead. Times travel as UTC ISO 8601
(and stay so in --json); every table shows them with `local_time`, in the station's zone and naming it.
An empty table is one line saying "none", so a pipe can tell "nothing" from "no answer".
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from rich import box
from rich.console import Console, ConsoleRenderable, OverflowMethod, RenderableType
from rich.table import Table
from rich.text import Text

# Piped output is never cut or wrapped: wider than any line we print (a width, not a buffer size).
PIPED_WIDTH = 1_000_000


def console() -> Console:
    """The console for stdout: the terminal's width on a terminal; piped, each line as wide as it is."""
    return Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)


def plain(value: object, *, empty: str = "") -> Text:
    """`value` as literal text (`empty` for None or "")."""
    return Text(empty if value is None or value == "" else str(value))


def styled(*parts: str | Text | tuple[str, str]) -> Text:
    """A line of literal parts, some with a style: styled(("PROBLEM", "red"), " ", name)."""
    return Text.assemble(*parts)


def problem_line(what: str, detail: str) -> Text:
    """`PROBLEM what: detail` (what: kind and subject), every word literal."""
    return styled(("PROBLEM", "red"), f" {what}: {detail}")


def local_time(value: str | None, zone: ZoneInfo) -> str:
    """A UTC ISO 8601 time as the station's local time with its zone (`2026-11-30 21:05:03 CST`); "-"
    for none."""
    if not value:
        return "-"
    local = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(zone)
    return local.strftime("%Y-%m-%d %H:%M:%S %Z")


def none_line(title: str) -> Text:
    """What an empty list prints instead of an empty table."""
    return Text(f"{title}: none")


def one_line_table(
    title: str,
    columns: Sequence[tuple[str, int | None]],
    rows: Sequence[Sequence[object]],
    *,
    flexible: str,
) -> RenderableType:
    """A frameless table of one line per row, for a screen that must fit a terminal. Each column is
    (name, widest it may get on a terminal, or None); the `flexible` column gives up width first. Cut
    text ends in "…"; piped, nothing is cut (see `console`). No rows: the line `title: none`."""
    if not rows:
        return none_line(title)
    shown = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    on_terminal = sys.stdout.isatty()  # piped, as wide as it is (as `console`)
    for name, widest in columns:
        shown.add_column(name, no_wrap=name != flexible, max_width=widest if on_terminal else None)
    for row in rows:
        cells = [plain(value, empty="-") for value in row]
        for cell in cells:
            cell.no_wrap, cell.overflow = True, "ellipsis"
        shown.add_row(*cells)
    return shown


def table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    empty: str = "",
    overflow: OverflowMethod = "ellipsis",
) -> RenderableType:
    """A table whose every cell is literal text (`empty` for None or ""); a renderable (a Text, a
    progress bar) is kept as is. No rows: the line `title: none`."""
    if not rows:
        return none_line(title)
    shown = Table(title=title)
    for column in columns:
        shown.add_column(column, overflow=overflow)
    for row in rows:
        shown.add_row(*[v if isinstance(v, ConsoleRenderable) else plain(v, empty=empty) for v in row])
    return shown
