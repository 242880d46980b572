"""Test-only crash points: the process kills itself with SIGKILL right at a named durable step.

`INGESTD_CRASH_AT=STEP[:N]` arms the Nth time (default the first) this process reaches STEP; the
variable is read once, when this module is first imported. Unset, as in production, `crash_point` does
one comparison and returns. It lives in `store/` because the store and the application both call it and
`store/` may import nothing of ours.

The steps, in the order an ingest reaches them (each fires just after the step, except where noted):
partial-write (a chunk written to the partial copy, not yet fsynced), fsync (the partial copy fsynced
and its durable offset recorded), read-back (the synced copy re-read from disk and matched), link (the
copy hard-linked at its content address, directory fsynced, not yet sealed), seal (the object sealed),
catalog-commit (the recording row and its audit event committed), audit-checkpoint (just before a
signed checkpoint is appended: the commit is durable, its checkpoint is not), camera-deletion (the
proven originals deleted from the camera), session-close (the dock session's end state committed).
Replication: vault-part (a multipart part acknowledged by the vault and recorded in the queue).
Eviction: evict-commit (an eviction's audit event and `evicted_at` committed, its bytes not yet removed).
"""

from __future__ import annotations

import enum
import os
import signal
import sys
import threading
from typing import Final

import structlog

ENV: Final = "INGESTD_CRASH_AT"

_log = structlog.get_logger(__name__)


class Step(enum.StrEnum):
    PARTIAL_WRITE = "partial-write"
    FSYNC = "fsync"
    READ_BACK = "read-back"
    LINK = "link"
    SEAL = "seal"
    CATALOG_COMMIT = "catalog-commit"
    AUDIT_CHECKPOINT = "audit-checkpoint"
    CAMERA_DELETION = "camera-deletion"
    SESSION_CLOSE = "session-close"
    VAULT_PART = "vault-part"
    EVICT_COMMIT = "evict-commit"


def parse(spec: str) -> tuple[Step, int]:
    """`STEP` or `STEP:N` (N >= 1); ValueError names what is wrong."""
    name, has_count, raw = spec.strip().partition(":")
    try:
        step = Step(name)
    except ValueError:
        known = ", ".join(step.value for step in Step)
        raise ValueError(f"{name!r} is not a crash point; known: {known}") from None
    if not has_count:
        return step, 1
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{raw!r} is not a hit count (a whole number from 1)")
    return step, int(raw)


def _from_environment() -> tuple[tuple[Step, int] | None, str | None]:
    spec = os.environ.get(ENV, "")
    if not spec:
        return None, None
    try:
        return parse(spec), None
    except ValueError as error:
        return None, str(error)


_ARMED, _PROBLEM = _from_environment()
_hits = 0
_hits_lock = threading.Lock()


def armed() -> tuple[Step, int] | None:
    """The step and hit the environment armed, or None; ValueError when the variable is malformed, so
    the entry point refuses to start instead of running a test that can never crash."""
    if _PROBLEM is not None:
        raise ValueError(_PROBLEM)
    return _ARMED


def crash_point(step: Step) -> None:
    """SIGKILL this process if `step` is the armed step and this is its armed hit."""
    if _ARMED is None or _ARMED[0] is not step:
        return
    global _hits  # noqa: PLW0603 - one counter per process, as the hit number means
    with _hits_lock:
        _hits += 1
        if _hits != _ARMED[1]:
            return
    _log.warning("crash_point_reached", step=step.value, hit=_ARMED[1], pid=os.getpid())
    for stream in (sys.stdout, sys.stderr):  # the line must reach the log before the kill
        stream.flush()
    os.kill(os.getpid(), signal.SIGKILL)
