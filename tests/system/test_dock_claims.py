"""What a docked camera, or a file beside it, claims is checked against what the station knows: the real
daemon as a subprocess, simulated serial cameras on real ptys, folder docks with real descriptors."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest
from sqlalchemy import select

from ingestd.docking.folders import DESCRIPTOR
from store.models import Flag, FlagKind, Officer, Recording, SessionState
from tests.conftest import BACKENDS
from tests.support.loopdev import root_filesystem_source
from tests.system.harness import Daemon, SimulatedCamera, wait_for
from tests.system.test_daemon import ended_sessions, wait_sessions


@pytest.mark.parametrize("daemon", BACKENDS, indirect=True)
def test_a_camera_cannot_rename_a_registered_officer_or_their_footage(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera]
) -> None:
    honest = make_camera("ZFY3301", files=1, officer_no="000101", officer_name="张三")
    liar = make_camera("ZFY3302", files=1, officer_no="000101", officer_name="李鬼")
    daemon.start()
    honest.dock(daemon.docks)
    (first,) = wait_sessions(daemon, "ZFY3301")
    liar.dock(daemon.docks)
    (second,) = wait_sessions(daemon, "ZFY3302")
    assert (
        first.state is second.state is SessionState.DONE
    )  # the claim is flagged, the footage still ingested
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            [officer] = db.scalars(select(Officer)).all()
            assert (officer.officer_no, officer.name) == ("000101", "张三")
            officers = {r.officer.name for r in db.scalars(select(Recording)) if r.officer is not None}
            assert officers == {"张三"}
            [flag] = db.scalars(select(Flag).where(Flag.kind == FlagKind.IDENTITY_MISMATCH)).all()
            assert (flag.details["officer_name_registered"], flag.details["officer_name_reported"]) == (
                "张三",
                "李鬼",
            )
            assert flag.details["device_serial"] == "ZFY3302"
    finally:
        catalog.close()


def test_a_descriptor_the_station_did_not_write_docks_nothing_and_other_docks_go_on(
    daemon: Daemon, make_camera: Callable[..., SimulatedCamera]
) -> None:
    foreign = make_camera("ZFY3303", files=1)
    os.chown(foreign.staging / DESCRIPTOR, 43210, -1)  # not root's: someone else wrote it
    disk = make_camera("ZFY3304", files=1)
    root_disk = root_filesystem_source()
    claim = json.loads((disk.staging / DESCRIPTOR).read_text(encoding="utf-8"))
    (disk.staging / DESCRIPTOR).write_text(json.dumps({**claim, "block": root_disk}), encoding="utf-8")
    good = make_camera("ZFY3305", files=1)
    daemon.start()
    foreign.dock(daemon.docks)
    disk.dock(daemon.docks)
    wait_for(
        "both descriptors to be ignored", lambda: daemon.log_text().count("dock_descriptor_ignored") >= 2
    )
    good.dock(daemon.docks)
    (session,) = wait_sessions(daemon, "ZFY3305")
    assert session.state is SessionState.DONE
    assert ended_sessions(daemon, "ZFY3303") == []
    assert ended_sessions(daemon, "ZFY3304") == []
    log = daemon.log_text()
    assert "owned by uid 43210" in log
    if root_disk.startswith("/dev/"):
        assert "in use by the station" in log
    assert disk.recordings(daemon.docks / "ZFY3304")  # its volume untouched
