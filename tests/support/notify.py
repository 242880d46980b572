"""A `[notify] command` for tests: a small script that files each payload it receives on stdin."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

NOTIFY_SCRIPT = """\
import pathlib, sys
out = pathlib.Path(sys.argv[1])
out.mkdir(exist_ok=True)
n = len(list(out.iterdir()))
(out / f"{n}.json").write_bytes(sys.stdin.buffer.read())
"""


def notify_command(tmp_path: Path) -> tuple[str, Path]:
    """The command line, and the directory where it writes payload N as `N.json`."""
    script = tmp_path / "notify.py"
    script.write_text(NOTIFY_SCRIPT, encoding="utf-8")
    out = tmp_path / "notified"
    return " ".join(shlex.quote(part) for part in (sys.executable, str(script), str(out))), out


def notified(out: Path) -> list[dict[str, Any]]:
    """The payloads received so far, in the order they came."""
    if not out.is_dir():
        return []
    return [
        json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(out.iterdir(), key=lambda p: int(p.stem))
    ]
