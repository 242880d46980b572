"""The VM tier's guest agent, run here as the real process it is in the guest: a request it cannot carry
out is answered with the reason, and it goes on serving."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def ask(share: Path, number: int, body: dict[str, Any]) -> dict[str, Any]:
    return send(share, number, json.dumps(body))


def send(share: Path, number: int, text: str) -> dict[str, Any]:
    """Write request `number` as the host does (whole, by a rename) and wait for the agent's reply."""
    name = f"{number:06d}.json"
    temporary = share / "requests" / f".{name}"
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(share / "requests" / name)
    return answer(share, number)


def answer(share: Path, number: int) -> dict[str, Any]:
    """The agent's reply to request `number`, once it is written."""
    reply = share / "replies" / f"{number:06d}.json"
    deadline = time.monotonic() + 30
    while not reply.exists():
        assert time.monotonic() < deadline, f"no reply to request {number}"
        time.sleep(0.02)
    body: dict[str, Any] = json.loads(reply.read_text(encoding="utf-8"))
    return body


def test_unknown_names_and_malformed_requests_get_an_error_and_the_agent_goes_on(tmp_path: Path) -> None:
    agent = subprocess.Popen([sys.executable, "-m", "tests.vm.agent", str(tmp_path)], cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "agent-ready").exists():
            assert agent.poll() is None, "the agent exited before it was ready"
            assert time.monotonic() < deadline, "the agent did not become ready"
            time.sleep(0.02)
        assert "no process named 'ingestd' was spawned" in ask(tmp_path, 1, {"poll": "ingestd"})["error"]
        assert (
            "no process named 'ingestd'"
            in ask(tmp_path, 2, {"signal": "ingestd", "number": 15, "wait": 1})["error"]
        )
        assert "malformed request" in ask(tmp_path, 3, {"timeout": 1})["error"]  # no argv
        assert (
            "cannot spawn"
            in ask(tmp_path, 4, {"spawn": "x", "argv": ["/nonexistent"], "log": "/dev/null"})["error"]
        )
        unhashable = {"spawn": ["x"], "argv": ["true"], "log": "/dev/null"}
        assert "named by a string" in ask(tmp_path, 5, unhashable)["error"]
        assert "not JSON" in send(tmp_path, 6, "{not json")["error"]
        assert "not a request object" in send(tmp_path, 7, "[1, 2]")["error"]
        assert ask(tmp_path, 8, {"argv": ["true"], "timeout": 10})["rc"] == 0  # still serving
        assert ask(tmp_path, 9, {"halt": True}) == {"rc": 0}
        assert agent.wait(timeout=30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
