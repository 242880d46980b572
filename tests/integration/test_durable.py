"""store/durable.py on real directories: what lands, what an error leaves, and the order of the real
syscalls (strace of a child process) that makes a name durable."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from store.durable import TEMP_SUFFIX, durable_file, write_durably

REPO = Path(__file__).resolve().parents[2]


class Interrupted(Exception):  # noqa: N818 - an event raised by the test in the middle of a write
    pass


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(TEMP_SUFFIX))


def test_the_content_lands_whole_with_exactly_the_mode_asked_for(tmp_path: Path) -> None:
    target = tmp_path / "report.csv"
    write_durably(target, b"a,b\n1,2\n", mode=0o640)
    assert target.read_bytes() == b"a,b\n1,2\n"
    assert target.stat().st_mode & 0o7777 == 0o640
    write_durably(target, b"replaced")
    assert target.read_bytes() == b"replaced"
    assert target.stat().st_mode & 0o7777 == 0o600
    assert leftovers(tmp_path) == []


def test_an_error_mid_write_removes_the_temp_file_and_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "audit-signing.pub"
    target.write_bytes(b"old key")
    with pytest.raises(Interrupted), durable_file(target) as handle:
        handle.write(b"half a new k")
        raise Interrupted
    assert target.read_bytes() == b"old key"
    assert leftovers(tmp_path) == []
    fresh = tmp_path / "never-written"
    with pytest.raises(Interrupted), durable_file(fresh) as handle:
        handle.write(b"partial")
        raise Interrupted
    assert not fresh.exists()
    assert leftovers(tmp_path) == []


def test_without_overwrite_an_existing_file_is_never_replaced(tmp_path: Path) -> None:
    target = tmp_path / "export.json"
    write_durably(target, b"first", overwrite=False)
    with pytest.raises(FileExistsError):
        write_durably(target, b"second", overwrite=False)
    assert target.read_bytes() == b"first"
    assert leftovers(tmp_path) == []


WRITER = """
import sys
from pathlib import Path
from store.durable import durable_file
with durable_file(Path(sys.argv[1]), overwrite=sys.argv[2] == "replace") as handle:
    handle.write(b"evidence manifest")
"""
_CALL = re.compile(r"^\d+ +(\w+)\((.*)\) += (-?\d+)")


def syscalls(trace: str, directory: Path) -> list[tuple[str, str, int]]:
    """(call, arguments, result) of the traced calls that name `directory` or use a descriptor."""
    calls = []
    for line in trace.splitlines():
        found = _CALL.match(line)
        if found and (str(directory) in found[2] or found[1] in {"write", "fsync"}):
            calls.append((found[1], found[2], int(found[3])))
    return calls


@pytest.mark.parametrize(("how", "naming"), [("replace", "rename"), ("link", "link")])
def test_the_file_is_fsynced_before_its_name_and_the_directory_after(
    tmp_path: Path, how: str, naming: str
) -> None:
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    directory = tmp_path / "out"
    directory.mkdir()
    target = directory / "manifest.json"
    trace_file = tmp_path / "trace"
    subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-o",
            str(trace_file),
            "-e",
            "trace=openat,write,fsync,rename,renameat,renameat2,link,linkat",
            sys.executable,
            "-c",
            WRITER,
            str(target),
            how,
        ],
        check=True,
        capture_output=True,
        cwd=REPO,
        timeout=60,
    )
    assert target.read_bytes() == b"evidence manifest"
    steps = iter(syscalls(trace_file.read_text(encoding="utf-8"), directory))

    def next_step(call_prefix: str, argument: str) -> int:
        for call, arguments, result in steps:
            if call.startswith(call_prefix) and argument in arguments:
                return result
        pytest.fail(f"no {call_prefix}(...{argument}...) in the expected order")

    temp_fd = next_step("openat", f"{directory}/.manifest.json.")
    assert next_step("write", f'{temp_fd}, "evidence manifest"') == len("evidence manifest")
    assert next_step("fsync", f"{temp_fd}") == 0
    next_step(naming, f'"{target}"')
    directory_fd = next_step("openat", f'"{directory}", O_RDONLY|O_CLOEXEC|O_DIRECTORY')
    assert next_step("fsync", f"{directory_fd}") == 0
