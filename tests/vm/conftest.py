"""The vm tier: one guest per test module, booted once; a failing test prints the guest's console log.

The tier skips, naming what is missing, where QEMU, virtme-ng, a kernel with modules, mtools or socat
are absent; under CI (CI=true, where .ci/system-deps installed them) that is a failure instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.vm.machine import Guest, kernel_image, kvm_works, unavailable

_kvm: dict[str, bool] = {}


def _guest_or_skip() -> Path:
    reason = unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"vm tier: {reason}")
        pytest.skip(f"vm tier: {reason}")
    kernel = kernel_image()
    assert kernel is not None
    return kernel


@pytest.fixture(scope="module")
def guest(request: pytest.FixtureRequest) -> Iterator[Guest]:
    """A booted guest for this module, under KVM only where the probe saw a KVM guest run (else TCG)."""
    kernel = _guest_or_skip()
    # Not pytest's tmp_path: the guest's share path must be short and the same inside the guest.
    base = Path(tempfile.mkdtemp(prefix=f"ingestd-vm-{request.module.__name__.rsplit('.', 1)[-1]}-"))
    if "kvm" not in _kvm:
        _kvm["kvm"] = kvm_works(kernel, base)
    machine = Guest(base=base, kernel=kernel, kvm=_kvm["kvm"])
    request.node.stash[CONSOLE] = machine.console_log
    try:
        machine.boot()
        yield machine
    finally:
        machine.close()
        if not request.node.stash.get(FAILED, False):
            shutil.rmtree(base, ignore_errors=True)  # kept after a failure, for its console log


CONSOLE = pytest.StashKey[Path]()
FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    module = item.getparent(pytest.Module)
    console = module.stash.get(CONSOLE, None) if module is not None else None
    if report.failed and console is not None and module is not None:
        module.stash[FAILED] = True
        report.sections.append(("guest console", f"the guest's console log: {console}"))
    return report
