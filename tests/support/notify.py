"""A `[notify] command` for tests: a small script that files each payload it receives on stdin."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

NOTIFY_SCRIPT = """\
import os, pathlib, sys, time
out = pathlib.Path(sys.argv[1])
gate = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else None
if gate is not None:  # a slow command: it says it is waiting (its pid), then waits until the gate opens
    pathlib.Path(f"{gate}.waiting").write_text(str(os.getpid()))
while gate is not None and not gate.exists():
    time.sleep(0.05)
out.mkdir(exist_ok=True)
n = len(list(out.iterdir()))
(out / f"{n}.json").write_bytes(sys.stdin.buffer.read())
"""


def notify_command(tmp_path: Path, gate: Path | None = None) -> tuple[str, Path]:
    """The command line, and the directory where it writes payload N as `N.json`. With `gate`, each run
    writes its pid to `<gate>.waiting`, then waits until `gate` exists before it files its payload."""
    script = tmp_path / "notify.py"
    script.write_text(NOTIFY_SCRIPT, encoding="utf-8")
    out = tmp_path / "notified"
    parts = [sys.executable, str(script), str(out), *([str(gate)] if gate is not None else [])]
    return " ".join(shlex.quote(part) for part in parts), out


def notified(out: Path) -> list[dict[str, Any]]:
    """The payloads received so far, in the order they came."""
    if not out.is_dir():
        return []
    return [
        json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(out.iterdir(), key=lambda p: int(p.stem))
    ]
