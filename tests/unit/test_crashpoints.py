"""Crash points: the spec syntax, and a real process that dies at exactly the armed hit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from store.crashpoints import ENV, Step, parse

# Reaches `link` three times, printing before each, so the output shows which hit killed it.
PROGRAM = """
from store.crashpoints import Step, crash_point
for hit in (1, 2, 3):
    print(hit, flush=True)
    crash_point(Step.SEAL)  # another step: never counted for `link`
    crash_point(Step.LINK)
print("survived", flush=True)
"""


def run_armed(spec: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if spec is not None:
        env[ENV] = spec
    return subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=False, timeout=60, env=env
    )


def test_parse_takes_a_step_and_an_optional_hit() -> None:
    assert parse("fsync") == (Step.FSYNC, 1)
    assert parse("catalog-commit:3") == (Step.CATALOG_COMMIT, 3)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fsnyc", "'fsnyc' is not a crash point; known: partial-write, fsync, read-back, link, seal"),
        ("link:0", "'0' is not a hit count"),
        ("link:-1", "'-1' is not a hit count"),
        ("link:x", "'x' is not a hit count"),
    ],
)
def test_parse_refuses_what_is_not_a_crash_point(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        parse(spec)


def test_an_armed_process_dies_by_sigkill_at_exactly_the_armed_hit() -> None:
    done = run_armed("link:2")
    assert done.returncode == -signal.SIGKILL
    printed, logged = done.stdout.splitlines()[:2], done.stdout.splitlines()[2:]
    assert printed == ["1", "2"]
    assert len(logged) == 1  # the line that says why, written before the kill
    assert "crash_point_reached" in logged[0]
    assert "step=link" in logged[0]


def test_without_the_variable_every_crash_point_is_inert() -> None:
    done = run_armed(None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "2", "3", "survived"]
