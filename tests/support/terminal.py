"""A command run on a real terminal (a pty of a given size), as an operator at a console sees it."""

from __future__ import annotations

import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Sequence
from fcntl import ioctl

ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def on_terminal(
    argv: Sequence[str], *, columns: int = 80, rows: int = 24, timeout: float = 60.0
) -> tuple[int, list[str]]:
    """Run `argv` with stdin and stdout on a `columns` by `rows` pty; its exit code and the lines it
    showed, without colour escapes (stderr is not the terminal)."""
    primary, terminal = pty.openpty()
    ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    try:
        process = subprocess.Popen(
            list(argv), stdin=terminal, stdout=terminal, stderr=subprocess.DEVNULL, env=env
        )
        os.close(terminal)
        terminal = -1
        shown = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([primary], [], [], left)[0]:
                process.kill()
                process.wait()
                raise AssertionError(f"{argv[-1]}: no end on the terminal within {timeout}s")
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not chunk:
                break
            shown += chunk
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(primary)
    text = ESCAPES.sub("", shown.decode("utf-8", "replace")).replace("\r\n", "\n")
    return code, text.rstrip("\n").split("\n")
