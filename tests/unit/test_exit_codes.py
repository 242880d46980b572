"""Each failure class has its own exit code, so scripts and systemd can tell failures apart."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from tests.support.errors import error_classes

SYSEXITS = range(64, 79)  # shared meanings by design (EX_IOERR, EX_CONFIG, ...)
USAGE_AND_CTL = range(20)  # 2 usage, 3 integrity, 4 incomplete, 13-16 ingestctl outcomes


def _error_classes() -> dict[int, set[str]]:
    by_code: dict[int, set[str]] = defaultdict(set)
    for value in error_classes():
        code = vars(value).get("exit_code")
        if isinstance(code, int):
            by_code[code].add(f"{value.__module__}.{value.__qualname__}")
    return by_code


def test_store_and_driver_failures_each_have_their_own_exit_code() -> None:
    by_code = _error_classes()
    assert by_code[37] == {"store.errors.DiskFullError"}
    shared = {
        code: names
        for code, names in by_code.items()
        if len(names) > 1 and code not in SYSEXITS and code not in USAGE_AND_CTL
    }
    assert shared == {}


def _readme_exit_codes() -> set[int]:
    """The codes the README's exit-code table lists (`| 37 |`, or a range written with an en dash)."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = text.split("Exit codes are distinct per failure", 1)[1].split("\n\n", 2)[1]
    codes: set[int] = set()
    for match in re.finditer(r"^\| (\d+)(?:[-\u2013](\d+))? \|", table, flags=re.MULTILINE):
        first, last = int(match[1]), int(match[2] or match[1])
        codes.update(range(first, last + 1))
    return codes


def test_every_failure_exit_code_is_in_the_readme_table() -> None:
    listed = _readme_exit_codes()
    undocumented = {
        code: sorted(names)
        for code, names in _error_classes().items()
        if code not in listed and code not in SYSEXITS and code not in USAGE_AND_CTL
    }
    assert undocumented == {}
