"""Approved footage delivered as files into a new directory of the caller's (exports and copies).

Guarantees:
- The daemon never resolves a path the caller chose. The caller (`ingestctl`, with its own rights and in
  its own mount namespace, see `destination`) creates DEST.partial and hands over an open descriptor of
  it; the daemon, which may run as root in a sandbox that cannot see the caller's files, works only
  relative to that descriptor: it takes the empty directory over (root-owned, 0700, so nobody changes it
  meanwhile), creates, writes, chowns and, on failure, removes through it, never following a symlink.
  So it never writes where the caller could not, and swapping names or symlinks redirects nothing.
- Nothing is read from the store unless the approval is valid for every recording at the time of the
  request; a refusal is audited (outcome "refused", with its code) in a transaction of its own.
- The approval is checked again, and the delivery recorded, before the files are handed to the caller
  (their uid, the group their new directory got); a failure empties the directory, gives it back and is
  audited (outcome "failed", or "refused" when the approval was withdrawn meanwhile). The caller renames
  DEST.partial to DEST once the daemon answered.
- A recording gets the same file name in every delivery: officer, case and time (004 art. 19(三)).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from ingestd.evidence.approvals import FootageAction, audit_refusal, check_approval, scope_recordings
from ingestd.evidence.bag import PayloadItem
from ingestd.evidence.errors import ApprovalRefused, EvidenceUsageError, ExportError
from ingestd.evidence.naming import payload_name
from ingestd.services import Services
from store.audit import Actor
from store.models import Approval, Recording, Unit
from store.times import iso

P = TypeVar("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Delivery:
    """What kind of delivery: the approval it needs, its audit action, and the error for a DEST that
    cannot be written (an `ExportError`, exit 15, worded for the command)."""

    action: FootageAction
    audit_action: str
    error: type[ExportError] = ExportError


def select_recordings(
    session: Session, approval: Approval | None, recording_ids: Sequence[int] | None
) -> list[Recording]:
    """The listed recordings, else every one the approval covers. Purged recordings have no footage
    left: one listed is an error, one merely in scope is left out."""
    if not recording_ids:
        rows = scope_recordings(session, approval) if approval is not None else []
        return [r for r in rows if r.purged_at is None]
    wanted = sorted(set(recording_ids))
    rows = list(session.scalars(select(Recording).where(Recording.id.in_(wanted)).order_by(Recording.id)))
    unknown = sorted(set(wanted) - {r.id for r in rows})
    if unknown:
        raise EvidenceUsageError(detail=f"no recording with id {', '.join(map(str, unknown))}")
    purged = {r.id: r.purged_at for r in rows if r.purged_at is not None}
    if purged:
        when = ", ".join(f"{rid} at {iso(at)}" for rid, at in purged.items())
        raise EvidenceUsageError(detail=f"recording(s) purged, their footage no longer exists: {when}")
    return rows


def approved_recordings(
    session: Session,
    approval_id: int,
    recording_ids: Sequence[int] | None,
    now: datetime,
    action: FootageAction,
    *,
    user: str,
) -> tuple[Approval, list[Recording]]:
    """The approval and the recordings it lets `user` `action` now; ApprovalRefused if it does not."""
    approval = session.get(Approval, approval_id)
    rows = select_recordings(session, approval, recording_ids)
    check_approval(approval, rows, now, action, user=user, approval_id=approval_id)
    if approval is None or not rows:
        raise EvidenceUsageError(detail=f"approval {approval_id} covers no recordings to {action.value}")
    return approval, rows


def units_of(session: Session, rows: Sequence[Recording]) -> dict[int, Unit]:
    unit_ids = {r.unit_id for r in rows if r.unit_id is not None}
    return {u.id: u for u in session.scalars(select(Unit).where(Unit.id.in_(unit_ids)))}


def payload_items(session: Session, rows: Sequence[Recording]) -> tuple[PayloadItem, ...]:
    """Each recording as a file to deliver: its name, what the catalog says its bytes are, its facts."""
    units = units_of(session, rows)
    items = []
    for row in rows:
        officer = row.officer
        unit = units.get(row.unit_id) if row.unit_id is not None else None
        name = payload_name(
            recording_id=row.id,
            officer_name=officer.name if officer else None,
            officer_no=officer.officer_no if officer else None,
            case=row.case_id or row.case_name,
            recorded_at=row.recorded_at,
            original_path=row.original_path,
        )
        facts = {
            "device_serial": row.camera.device_serial,
            "officer_no": officer.officer_no if officer else None,
            "officer_name": officer.name if officer else None,
            "unit_no": unit.unit_no if unit else None,
            "unit_name": unit.name if unit else None,
            "original_path": row.original_path,
            "recorded_at": iso(row.recorded_at),
            "recorded_at_camera": iso(row.recorded_at_raw),
            "recorded_at_source": row.recorded_at_source,
            "clock_offset_s": row.clock_offset_s,
            "duration_s": row.duration_s,
            "ingested_at": iso(row.ingested_at),
            "case_id": row.case_id,
            "case_name": row.case_name,
            "case_party": row.case_party,
            "event": row.event,
            "place": row.place,
            "confidentiality": row.confidentiality.value,
        }
        items.append(
            PayloadItem(
                name=name,
                recording_id=row.id,
                blake3=row.blake3,
                sha256=row.sha256,
                size=row.size,
                facts=facts,
            )
        )
    return tuple(items)


@contextlib.contextmanager
def refusal_audited(
    services: Services, actor: Actor, action: FootageAction, details: dict[str, Any], now: datetime
) -> Iterator[None]:
    """An ApprovalRefused raised inside is audited, in a transaction of its own, and passed on."""
    try:
        yield
    except ApprovalRefused as refused:
        audit_refusal(
            services.catalog, services.audit, actor, refused, action=action, details=details, now=now
        )
        raise


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Workspace:
    """The caller's new DEST.partial, held by the daemon's own descriptor `fd`, and whose it is to be."""

    fd: int
    dest: Path  # as the caller named it: for messages and records only, never opened
    uid: int  # the caller's
    gid: int  # the group the caller's new directory got

    @property
    def path(self) -> Path:
        """The directory itself, for reading back what was written (the kernel's magic link to `fd`)."""
        return Path(f"/proc/self/fd/{self.fd}")


def _take_over(fd: int, actor: Actor) -> str | None:
    """Make the directory open as `fd` ours (root's, 0700) if it is the caller's and empty; else why not."""
    made = os.fstat(fd)
    if actor.uid is not None and actor.uid not in (0, made.st_uid):
        return f"the directory handed over is not the caller's (uid {actor.uid})"
    if os.geteuid() == 0:
        os.fchown(fd, 0, 0)
    os.fchmod(fd, 0o700)
    with os.scandir(fd) as entries:  # looked at once it is ours: nothing can be added now
        if any(True for _ in entries):
            if os.geteuid() == 0:
                os.fchown(fd, made.st_uid, made.st_gid)  # not ours to fill: given back as it was
            os.fchmod(fd, made.st_mode & 0o7777)
            return "the directory handed over is not empty"
    return None


def take_workspace(
    passed: int, dest: Path, actor: Actor, error: type[ExportError] = ExportError
) -> Workspace:
    """Take over the empty directory the caller made and passed as `passed`: owned by root and 0700 while
    the daemon fills it, so the caller (who owns the directory around it) cannot change what is in it."""
    try:
        fd = os.open(".", _DIRECTORY, dir_fd=passed)  # our own descriptor, read-only, whatever was sent
    except OSError as problem:
        raise error(dest=dest, detail=f"the directory handed over: {problem.strerror or problem}") from None
    made = os.fstat(fd)
    try:
        refused = _take_over(fd, actor)
    except OSError as problem:
        refused = f"the directory handed over: {problem.strerror or problem}"
    if refused is not None:
        os.close(fd)
        raise error(dest=dest, detail=refused)
    return Workspace(fd, dest, made.st_uid, made.st_gid)


def _discard(workspace: Workspace) -> None:
    """Remove what was written, through the descriptor, and give the empty directory back."""
    with os.scandir(workspace.fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.name, dir_fd=workspace.fd)
            else:
                os.unlink(entry.name, dir_fd=workspace.fd)
    if os.geteuid() == 0:
        os.fchown(workspace.fd, workspace.uid, workspace.gid)


def _chown_tree(directory: int, uid: int, gid: int) -> None:
    with os.scandir(directory) as entries:
        for entry in entries:
            os.chown(entry.name, uid, gid, dir_fd=directory, follow_symlinks=False)
            if entry.is_dir(follow_symlinks=False):
                inner = os.open(entry.name, _DIRECTORY, dir_fd=directory)
                try:
                    _chown_tree(inner, uid, gid)
                finally:
                    os.close(inner)


def give_to(workspace: Workspace, mode: int = 0o750) -> None:
    """Hand the tree to the caller, so they can pass it on: every file first, the directory last."""
    if os.geteuid() == 0:
        _chown_tree(workspace.fd, workspace.uid, workspace.gid)
        os.fchown(workspace.fd, workspace.uid, workspace.gid)
    os.fchmod(workspace.fd, mode)


@dataclass(frozen=True)
class DeliveryRequest:
    """A caller's request to have approved footage delivered into the new directory it passed open as
    `directory` (DEST.partial, to be renamed `dest` by the caller)."""

    services: Services
    actor: Actor
    approval_id: int
    dest: Path
    directory: int
    now: datetime
    recording_ids: tuple[int, ...] = ()  # empty: every recording the approval covers

    @property
    def details(self) -> dict[str, Any]:
        """The request as its audit events record it."""
        return {
            "approval": self.approval_id,
            "destination": str(self.dest),
            "requested_recordings": sorted(set(self.recording_ids)),
        }

    def approved_recordings(
        self, session: Session, action: FootageAction
    ) -> tuple[Approval, list[Recording]]:
        return approved_recordings(
            session, self.approval_id, self.recording_ids, self.now, action, user=self.actor.user
        )

    def recheck_approval(self, session: Session, recording_ids: Sequence[int], action: FootageAction) -> None:
        """Before the files are handed over: revoked while they were being written? Then they are not.
        The approval row stays locked until `session` ends."""
        approval = session.get(Approval, self.approval_id, with_for_update=True)
        rows = list(session.scalars(select(Recording).where(Recording.id.in_(recording_ids))))
        check_approval(approval, rows, self.now, action, user=self.actor.user, approval_id=self.approval_id)


def deliver(
    request: DeliveryRequest,
    kind: Delivery,
    prepare: Callable[[DeliveryRequest], P],
    build: Callable[[DeliveryRequest, P, Workspace], R],
) -> R:
    """`prepare` (check the approval, plan what to write: a refusal is audited), take over the caller's
    directory and `build` the files in it (a failure empties it and is audited)."""
    services, actor, details = request.services, request.actor, request.details
    with refusal_audited(services, actor, kind.action, details, request.now):
        plan = prepare(request)
    workspace: Workspace | None = None
    try:
        workspace = take_workspace(request.directory, request.dest, actor, kind.error)
        return build(request, plan, workspace)
    except BaseException as error:
        if workspace is not None:
            with contextlib.suppress(OSError):
                _discard(workspace)
        outcome = "refused" if isinstance(error, ApprovalRefused) else "failed"
        with services.catalog.transaction() as session:
            services.audit.append(
                session,
                actor=actor,
                action=kind.audit_action,
                subject=f"approval:{request.approval_id}",
                outcome=outcome,
                at=request.now,
                details={**details, "error": str(error) or type(error).__name__},
            )
        raise
    finally:
        if workspace is not None:
            os.close(workspace.fd)
