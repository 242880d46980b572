"""The shipped unit's sandbox, emulated for a daemon started by a test (no systemd as PID 1 here).

What `systemd/ingestd.service` says is read from the file, not restated: ProtectSystem=strict (every
mount read-only but /dev, /proc, /sys and the ReadWritePaths), ProtectHome=yes and PrivateTmp=yes (the
callers' files are out of sight: here an empty read-only tmpfs over the directories given as `hidden`),
NoNewPrivileges and the CapabilityBoundingSet. The ReadWritePaths are mapped to the test station's own
directories. `unshare` gives the daemon a private mount namespace, as PrivateMounts does; the wrapper
execs, so the daemon keeps the pid the harness signals.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "ingestd.service"
# PrivateMounts=yes alone: the daemon's mounts live in its own namespace and end with its last process.
PRIVATE_MOUNTS: tuple[str, ...] = ("unshare", "--mount", "--propagation", "private", "--")

# Runs inside the new mount namespace, as root, then execs the daemon: argv = hidden..., "--rw",
# rw..., "--caps", caps, "--", command...
_ENTER = r"""
import os, subprocess, sys
args = sys.argv[1:]
split = args.index("--")
options, command = args[:split], args[split + 1 :]
hidden = options[: options.index("--rw")]
rw = options[options.index("--rw") + 1 : options.index("--caps")]
caps = options[options.index("--caps") + 1]
def mount(*words):
    subprocess.run(["mount", *words], check=True)
mount("--make-rprivate", "/")
for path in rw:
    mount("--bind", path, path)
keep = ("/proc", "/sys", "/dev")
with open("/proc/self/mountinfo") as table:
    points = [line.split()[4].replace("\\040", " ") for line in table]
for point in points:
    if point in rw or any(point == k or point.startswith(k + "/") for k in keep):
        continue
    subprocess.run(["mount", "-o", "remount,bind,ro", point], check=False, capture_output=True)
for path in hidden:
    mount("-t", "tmpfs", "-o", "ro,mode=0755,size=64k", "tmpfs", path)
limits = ["--no-new-privs", "--inh-caps=-all", f"--bounding-set=-all,{caps}"]
os.execvp("setpriv", ["setpriv", *limits, "--", *command])
"""


def unit_settings(unit: Path = UNIT) -> dict[str, list[str]]:
    """Every `Key=value` of the unit, values split on blanks, repeated keys joined."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "[")) and "=" in stripped:
            key, value = stripped.split("=", 1)
            found.setdefault(key, []).extend(value.split())
    return found


def usable() -> str | None:
    """Why the sandbox cannot be emulated here, or None."""
    missing = [tool for tool in ("unshare", "setpriv", "mount") if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)}"
    return None


def sandbox_wrapper(read_write: Mapping[str, Sequence[Path]], hidden: Sequence[Path]) -> tuple[str, ...]:
    """The command prefix that runs a daemon under the unit's sandbox; `read_write` maps each of the
    unit's ReadWritePaths to the directories standing in for it."""
    settings = unit_settings()
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["ProtectHome"] == ["yes"]
    assert settings["PrivateTmp"] == ["yes"]
    assert settings["NoNewPrivileges"] == ["yes"]
    assert sorted(settings["ReadWritePaths"]) == sorted(read_write), "map every ReadWritePaths entry"
    caps = ",".join("+" + cap.removeprefix("CAP_").lower() for cap in settings["CapabilityBoundingSet"])
    rw = [str(path) for paths in read_write.values() for path in paths]
    return (
        *PRIVATE_MOUNTS,
        sys.executable,
        "-c",
        _ENTER,
        *map(str, hidden),
        "--rw",
        *rw,
        "--caps",
        caps,
        "--",
    )
