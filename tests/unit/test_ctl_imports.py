"""Importing `ingestctl` loads no daemon, no jobs, no device watchers: an administrator's command starts
fast, and a bug in the daemon's machinery cannot break the tools used to inspect it."""

from __future__ import annotations

import json
import subprocess
import sys

DAEMON_MODULES = ("ingestd.daemon", "ingestd.jobs", "ingestd.manager", "ingestd.session")
DAEMON_PACKAGES = ("ingestd.docking", "watchdog", "pyudev", "apscheduler")

# A fresh interpreter: this test process has imported everything already.
PROBE = """
import json, sys
import ingestd.ctl
print(json.dumps(sorted(sys.modules)))
"""


def test_importing_ingestctl_loads_no_daemon_jobs_or_watchers() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(done.stdout)
    assert "ingestd.ctl.client" in loaded  # the probe saw the package's own modules
    dragged = [
        name
        for name in loaded
        if name in DAEMON_MODULES or any(name == p or name.startswith(f"{p}.") for p in DAEMON_PACKAGES)
    ]
    assert dragged == []
