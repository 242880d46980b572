"""The guest's end of the vm tier: runs what the host asks, through files on the read-write share.

Started by virtme-ng's `--exec` inside the guest (`python -m tests.vm.agent SHARE`); stdlib only. The host
writes `SHARE/requests/N.json` atomically and waits for `SHARE/replies/N.json`:
- `{"argv": [...], "timeout": s}` runs a command to completion: `{"rc", "stdout", "stderr"}`;
- `{"spawn": name, "argv": [...], "log": path}` starts a long-lived process (the daemon): `{"pid"}`;
- `{"poll": name}` asks whether it still runs: `{"rc"}` (None while it runs);
- `{"signal": name, "number": n, "wait": s}` signals it and waits for it: `{"rc"}` (None if still running);
- `{"halt": true}` kills what it spawned and exits, which powers the guest off.
A request it cannot carry out (a name it never spawned, a malformed request) gets `{"error"}` and the
agent goes on serving: a crash would leave the host waiting out its timeout for a reply.
A file share needs no network in the guest and survives the guest's console being busy with kernel logs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

POLL_S = 0.1


def _reply(share: Path, name: str, body: dict[str, Any]) -> None:
    replies = share / "replies"
    temporary = replies / f".{name}"
    temporary.write_text(json.dumps(body), encoding="utf-8")
    temporary.replace(replies / name)


class _RequestError(Exception):
    """A request the agent cannot carry out; its message is the reply's `error`."""


def _spawned(spawned: dict[str, subprocess.Popen[bytes]], name: str) -> subprocess.Popen[bytes]:
    if name not in spawned:
        raise _RequestError(f"no process named {name!r} was spawned (spawned: {sorted(spawned)})")
    return spawned[name]


def _handle(request: dict[str, Any], spawned: dict[str, subprocess.Popen[bytes]]) -> dict[str, Any]:
    if "spawn" in request:
        if not isinstance(request["spawn"], str):
            raise _RequestError(f"a spawned process is named by a string, not {request['spawn']!r}")
        with Path(request["log"]).open("ab") as log:
            process = subprocess.Popen(request["argv"], stdout=log, stderr=subprocess.STDOUT)
        spawned[request["spawn"]] = process
        return {"pid": process.pid}
    if "poll" in request:
        return {"rc": _spawned(spawned, request["poll"]).poll()}
    if "signal" in request:
        process = _spawned(spawned, request["signal"])
        if process.poll() is None:
            process.send_signal(int(request["number"]))
        try:
            return {"rc": process.wait(timeout=float(request["wait"]))}
        except subprocess.TimeoutExpired:
            return {"rc": None}
    try:
        done = subprocess.run(
            request["argv"], capture_output=True, timeout=float(request["timeout"]), check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"rc": None, "stdout": "", "stderr": str(error)}
    return {
        "rc": done.returncode,
        "stdout": done.stdout.decode("utf-8", "replace"),
        "stderr": done.stderr.decode("utf-8", "replace"),
    }


def serve(share: Path) -> None:
    requests = share / "requests"
    requests.mkdir(exist_ok=True)
    (share / "replies").mkdir(exist_ok=True)
    (share / "agent-ready").write_text(os.uname().release, encoding="utf-8")
    spawned: dict[str, subprocess.Popen[bytes]] = {}
    while True:
        pending = sorted(p for p in requests.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
        if not pending:
            time.sleep(POLL_S)
            continue
        for path in pending:
            text = path.read_text(encoding="utf-8")
            path.unlink()
            try:
                request = json.loads(text)
            except ValueError as error:
                _reply(share, path.name, {"error": f"not JSON: {error}"})
                continue
            if not isinstance(request, dict):
                _reply(share, path.name, {"error": f"not a request object: {text[:200]!r}"})
                continue
            if request.get("halt"):
                for process in spawned.values():
                    if process.poll() is None:
                        process.kill()
                        process.wait()
                _reply(share, path.name, {"rc": 0})
                return
            try:
                answer = _handle(request, spawned)
            except _RequestError as error:
                answer = {"error": str(error)}
            except OSError as error:  # a spawn whose program cannot start, or whose log cannot open
                answer = {"error": f"cannot spawn: {error}"}
            except (KeyError, TypeError, ValueError) as error:  # a malformed request
                answer = {"error": f"malformed request {request!r}: {type(error).__name__}: {error}"}
            _reply(share, path.name, answer)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
