"""A pure policy loads no catalog machinery: importing it in a fresh interpreter pulls in neither
SQLAlchemy nor the object store's copy threads."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import ingestd.policies

POLICIES = sorted(info.name for info in pkgutil.iter_modules(ingestd.policies.__path__, "ingestd.policies."))
FORBIDDEN = ("sqlalchemy", "store.objects", "store.models", "store.catalog")
PROBE = """\
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


def test_every_policy_module_is_probed() -> None:
    assert "ingestd.policies.flags" in POLICIES
    assert "ingestd.policies.retention" in POLICIES


@pytest.mark.parametrize("module", POLICIES)
def test_importing_a_policy_loads_no_sqlalchemy_and_no_object_store(module: str) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, module], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(probe.stdout)
    assert [name for name in loaded if name.startswith(FORBIDDEN)] == []
