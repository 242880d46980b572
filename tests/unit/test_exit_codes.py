"""Each failure class has its own exit code, so scripts and systemd can tell failures apart; the codes
`ingestd` and `ingestctl` choose are one table (`ingestd.exit_codes`), and the README lists them all."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections import defaultdict
from pathlib import Path

import drivers
import ingestd
import store
from ingestd.exit_codes import ExitCode

ROOT = Path(__file__).resolve().parents[2]
# Meanings shared by design (usage, integrity, permission denied, the sysexits): one row in the table each.
TABLE = {code.value for code in ExitCode}


def _error_classes() -> dict[int, set[str]]:
    by_code: dict[int, set[str]] = defaultdict(set)
    for package in (store, drivers, ingestd):
        for module_info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if ".simulator" in module_info.name or module_info.name.endswith("__main__"):
                continue
            module = importlib.import_module(module_info.name)
            for value in vars(module).values():
                if isinstance(value, type) and issubclass(value, Exception) and "exit_code" in vars(value):
                    code = vars(value)["exit_code"]
                    if isinstance(code, int):
                        by_code[code].add(f"{value.__module__}.{value.__qualname__}")
    return by_code


def test_store_and_driver_failures_each_have_their_own_exit_code() -> None:
    by_code = _error_classes()
    assert by_code[37] == {"store.errors.DiskFullError"}
    shared = {code: names for code, names in by_code.items() if len(names) > 1 and code not in TABLE}
    assert shared == {}


def _readme_exit_codes() -> set[int]:
    """The codes the README's exit-code table lists (`| 37 |`, or a range written with an en dash)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("Exit codes are distinct per failure", 1)[1].split("\n\n", 2)[1]
    codes: set[int] = set()
    for match in re.finditer(r"^\| (\d+)(?:[-\u2013](\d+))? \|", table, flags=re.MULTILINE):
        first, last = int(match[1]), int(match[2] or match[1])
        codes.update(range(first, last + 1))
    return codes


def test_every_failure_exit_code_is_in_the_readme_table() -> None:
    listed = _readme_exit_codes()
    undocumented = {code: sorted(names) for code, names in _error_classes().items() if code not in listed}
    assert undocumented == {}


def test_every_code_of_the_table_is_in_the_readme_table() -> None:
    assert {code for code in ExitCode if code is not ExitCode.OK} - _readme_exit_codes() == set()


def test_ingestd_errors_take_their_codes_from_the_one_table() -> None:
    outside = {
        code: sorted(name for name in names if name.startswith("ingestd."))
        for code, names in _error_classes().items()
        if code not in TABLE
    }
    assert {code: names for code, names in outside.items() if names} == {}


# An exit code written as a number: `EXIT_X = 3`, `exit_code = 13`, `SystemExit(3)`, `sys.exit(130)`.
_NUMBERED = re.compile(
    r"^\s*(?:\w*EX(?:IT)?_\w+|exit_code)\s*(?::[^=\n]+)?=\s*\d+|(?:SystemExit|sys\.exit)\(\d+\)",
    flags=re.MULTILINE,
)


def test_no_exit_code_of_ours_is_a_number_outside_the_table() -> None:
    written = {
        str(path.relative_to(ROOT)): _NUMBERED.findall(path.read_text(encoding="utf-8"))
        for path in (ROOT / "ingestd").rglob("*.py")
        if path.name != "exit_codes.py"
    }
    assert {path: found for path, found in written.items() if found} == {}
