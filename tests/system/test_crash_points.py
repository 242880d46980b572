"""A SIGKILL at every durable step of an ingest loses nothing and stores nothing twice.

The daemon kills itself at the armed crash point (`INGESTD_CRASH_AT`, see `store.crashpoints`), is
restarted without it, and the camera, still in its dock, is docked again. After the crash every recording
is on the camera or stored and verified, never neither; after the restart each is stored exactly once,
deleted from the camera only then, and `verify --objects` is clean.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest
from sqlalchemy import select

from store.crashpoints import ENV, Step
from store.models import AuditEvent, Camera, Recording, SessionState, StoredObject
from store.objects import object_relpath
from tests.conftest import BACKENDS
from tests.system.harness import Daemon, SimulatedCamera
from tests.system.test_daemon import MIB, ingestctl_verify, wait_sessions

SERIAL = "ZFY8001"
# Two files of 6 MiB with 4 MiB copy buffers and a 1 MiB fsync interval: the first fsync leaves a
# partial copy that is durable but incomplete, and every step is reached before the second file.
FILES, SIZE = 2, 6 * MIB


def camera_digests(camera: SimulatedCamera, volume: Path) -> dict[str, str]:
    """BLAKE3 of each recording still on the camera's volume, by its name there."""
    return {
        str(path.relative_to(volume)): blake3.blake3(path.read_bytes()).hexdigest()
        for path in camera.recordings(volume)
    }


def deletion_outcomes(daemon: Daemon) -> dict[str, list[str]]:
    """The outcomes of each dock session's `camera.delete-originals` events, in order."""
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            rows = db.execute(
                select(AuditEvent.subject, AuditEvent.outcome)
                .where(AuditEvent.action == "camera.delete-originals")
                .order_by(AuditEvent.seq)
            ).all()
    finally:
        catalog.close()
    outcomes: dict[str, list[str]] = {}
    for row in rows:
        outcomes.setdefault(row.subject, []).append(row.outcome)
    return outcomes


def stored_and_verified(daemon: Daemon) -> list[str]:
    """Digests the catalog lists for the camera whose object was read back and still hashes right."""
    catalog = daemon.catalog()
    try:
        with catalog.transaction() as db:
            rows = db.execute(
                select(Recording.blake3, StoredObject.last_verified_at)
                .join(StoredObject, StoredObject.blake3 == Recording.blake3)
                .join(Camera, Camera.id == Recording.camera_id)
                .where(Camera.device_serial == SERIAL)
            ).all()
    finally:
        catalog.close()
    found = []
    for digest, verified_at in rows:
        stored = daemon.store / object_relpath(digest)
        if verified_at is not None and blake3.blake3(stored.read_bytes()).hexdigest() == digest:
            found.append(digest)
    return found


def stored_objects(daemon: Daemon) -> list[str]:
    return sorted(path.name for path in (daemon.store / "objects").rglob("*") if path.is_file())


@pytest.mark.parametrize("daemon", BACKENDS, indirect=True)
# The ingest's steps; vault-part is replication's (tests/integration/test_replication.py), evict-commit
# eviction's (tests/integration/test_eviction.py).
@pytest.mark.parametrize(
    "step", [step for step in Step if step not in {Step.VAULT_PART, Step.EVICT_COMMIT}], ids=str
)
def test_a_sigkill_at_each_durable_step_loses_nothing_and_stores_nothing_twice(
    step: Step, daemon: Daemon, make_camera: Callable[..., SimulatedCamera]
) -> None:
    daemon.extra_config = "\n[audit]\ncheckpoint_every = 1\n"  # a checkpoint after every commit
    camera = make_camera(SERIAL, files=FILES, size_bytes=SIZE)
    originals = camera_digests(camera, camera.staging)
    expected = sorted(originals.values())
    assert len(expected) == FILES
    daemon.start(env={ENV: step.value})
    volume = camera.dock(daemon.docks)
    assert daemon.process is not None
    assert daemon.process.wait(timeout=120) == -signal.SIGKILL
    daemon.kill()  # already dead: closes the notify socket
    reached = daemon.events("crash_point_reached")
    assert [(event["step"], event["hit"]) for event in reached] == [(step.value, 1)]

    # At the moment of the crash: each recording is on the camera, unchanged, or stored and verified.
    left = camera_digests(camera, volume)
    assert all(originals[name] == digest for name, digest in left.items())
    safe = set(left.values()) | set(stored_and_verified(daemon))
    assert safe == set(expected), f"lost at {step}: {set(expected) - safe}"

    status = daemon.start()  # no crash point now; the camera never left its dock
    assert "reconciled" in status
    sessions = wait_sessions(daemon, SERIAL, count=2, timeout=120)
    assert sessions[-1].state is SessionState.DONE, sessions[-1].failure_reason
    assert sorted(stored_and_verified(daemon)) == expected  # each once: one row per recording
    assert stored_objects(daemon) == expected  # one object per content, nothing orphaned
    assert camera.recordings(volume) == []  # deleted from the camera, only after proof
    assert not any((daemon.store / "partial").iterdir())
    assert not any((daemon.store / "quarantine").iterdir())
    # One deletion of the originals per card, on record from start to end: a deletion the crash cut
    # short is closed as interrupted at start-up (the camera then holds nothing more to delete).
    first, second = (f"dock_session:{s.id}" for s in sessions[-2:])
    expected_outcomes = {
        Step.CAMERA_DELETION: {first: ["started", "interrupted"]},
        Step.SESSION_CLOSE: {first: ["started", "done"]},
    }.get(step, {second: ["started", "done"]})
    assert deletion_outcomes(daemon) == expected_outcomes
    assert daemon.stop() == 0
    report = ingestctl_verify(daemon)
    assert report["clean"] is True, report
    assert report["exit_code"] == 0


def test_a_crash_point_that_names_no_step_stops_the_daemon_before_it_starts(daemon: Daemon) -> None:
    daemon.base.mkdir(parents=True)
    daemon.write_config()
    done = daemon.run_refused({ENV: "link:0"})
    assert done.returncode == 78
    assert done.stderr.strip().splitlines() == [
        "ingestd: error: INGESTD_CRASH_AT=link:0: '0' is not a hit count (a whole number from 1)"
    ]
    assert not daemon.state_dir.exists()  # refused before anything was opened
