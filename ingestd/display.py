"""What `ingestctl` prints through rich: data never reaches the markup parser, and a pipe gets it whole.

Camera file names, officer names, bag contents and paths can hold `[`; rich would read `x[/red].mp4` as
markup and fail (or restyle the line). Everything that is not our own literal goes through here.
Piped (grep, a file, a mail), rich would assume 80 columns and cut cells to `ZFY0…` or wrap a PROBLEM
line in two; `console()` gives every line the width it needs there instead.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rich.console import Console, ConsoleRenderable, OverflowMethod
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


def table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    empty: str = "",
    overflow: OverflowMethod = "ellipsis",
) -> Table:
    """A table whose every cell is literal text (`empty` for None or ""); a renderable (a Text, a
    progress bar) is kept as is."""
    shown = Table(title=title)
    for column in columns:
        shown.add_column(column, overflow=overflow)
    for row in rows:
        shown.add_row(*[v if isinstance(v, ConsoleRenderable) else plain(v, empty=empty) for v in row])
    return shown
