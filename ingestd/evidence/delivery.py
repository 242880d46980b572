"""Approved footage delivered as files into a new directory of the caller's (exports and copies).

Guarantees:
- DEST is absolute, does not exist, and lies in a directory the caller owns: the daemon, which may run as
  root, never becomes a way to write where the caller could not. An existing DEST or DEST.partial is
  never touched.
- Nothing is read from the store unless the approval is valid for every recording at the time of the
  request; a refusal is audited (outcome "refused", with its code) in a transaction of its own.
- The files are written in DEST.partial, handed to the caller (their uid, the group of the directory
  they asked for) and renamed to DEST only when complete and recorded; a failure removes the partial
  directory and is audited (outcome "failed", or "refused" when the approval was withdrawn meanwhile).
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
from ingestd.policies.flags import iso
from ingestd.services import Services
from store.audit import Actor
from store.models import Approval, Recording, Unit
from store.objects import fsync_dir

PARTIAL_SUFFIX = ".partial"
P = TypeVar("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Delivery:
    """What kind of delivery: the approval it needs, its audit action, and the error for a DEST that
    cannot be written (an `ExportError`, exit 15, worded for the command)."""

    action: FootageAction
    audit_action: str
    error: type[ExportError] = ExportError


def check_destination(dest: Path, actor: Actor, error: type[ExportError] = ExportError) -> Path:
    """The partial path to build in. DEST must be absolute (the daemon's working directory is not the
    caller's), new, and in a directory the caller owns."""
    if not dest.is_absolute():
        raise EvidenceUsageError(detail=f"destination {dest} must be an absolute path")
    if not dest.name or dest.name in (".", ".."):
        raise EvidenceUsageError(detail=f"destination {dest} must name a new directory")
    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    if dest.exists() or dest.is_symlink():
        raise error(dest=dest, detail="already exists; nothing is ever overwritten")
    if partial.exists() or partial.is_symlink():
        raise error(dest=dest, detail=f"{partial} exists (an interrupted attempt?); remove it first")
    parent = dest.parent
    try:
        info = parent.stat()
    except OSError as problem:
        raise error(dest=dest, detail=f"parent directory: {problem.strerror or problem}") from problem
    if not parent.is_dir():
        raise error(dest=dest, detail=f"{parent} is not a directory")
    if actor.uid is not None and actor.uid not in (0, info.st_uid):
        raise error(dest=dest, detail=f"{parent} is not owned by the caller (uid {actor.uid})")
    return partial


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


@dataclass(frozen=True)
class Workspace:
    """DEST.partial, held by a descriptor. The caller owns the directory it lies in and could swap the
    name for a symlink while the daemon (root) works, so files are written, handed over and removed
    through the descriptor (`path`), and the name is renamed only while it is still this directory."""

    name: Path
    dest: Path
    fd: int

    @property
    def path(self) -> Path:
        """The directory itself, whatever its name now points to (the kernel's magic link to `fd`)."""
        return Path(f"/proc/self/fd/{self.fd}")

    def still_named(self) -> bool:
        try:
            named = os.lstat(self.name)
        except OSError:
            return False
        held = os.fstat(self.fd)
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _make_workspace(partial: Path, dest: Path, error: type[ExportError] = ExportError) -> Workspace:
    try:
        partial.mkdir(mode=0o750)
        fd = os.open(partial, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as problem:
        raise error(dest=dest, detail=f"cannot create {partial}: {problem.strerror or problem}") from problem
    if os.fstat(fd).st_uid != os.geteuid():  # swapped for a directory of the caller's before we held it
        os.close(fd)
        raise error(dest=dest, detail=f"{partial} was replaced while it was being created")
    return Workspace(partial, dest, fd)


def _discard(workspace: Workspace) -> None:
    """Remove what was written, through the descriptor; the name only while it is still ours."""
    for entry in os.scandir(workspace.path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            Path(entry.path).unlink()
    if workspace.still_named():
        workspace.name.rmdir()


def give_to(workspace: Workspace, uid: int | None) -> None:
    """Hand the tree to the caller, so they can pass it on: their uid, and the group of the directory
    they chose (the caller's gid is not known here)."""
    if uid is None or os.geteuid() != 0:
        return
    gid = workspace.dest.parent.stat().st_gid
    for directory, dirnames, filenames in os.walk(workspace.path):
        for name in [*dirnames, *filenames]:
            os.chown(Path(directory) / name, uid, gid, follow_symlinks=False)
    os.fchown(workspace.fd, uid, gid)


def publish(workspace: Workspace, error: type[ExportError] = ExportError) -> None:
    """Rename the complete workspace to DEST, durably; never over something that appeared meanwhile,
    and never a name that no longer leads to the workspace."""
    dest = workspace.dest
    if dest.exists() or dest.is_symlink():
        raise error(dest=dest, detail="appeared while the files were being written")
    if not workspace.still_named():
        raise error(dest=dest, detail=f"{workspace.name} was moved or replaced while the files were written")
    try:
        workspace.name.rename(dest)
        fsync_dir(dest.parent)
    except OSError as problem:
        raise error(dest=dest, detail=f"rename failed: {problem.strerror or problem}") from problem


@dataclass(frozen=True)
class DeliveryRequest:
    """A caller's request to have approved footage delivered into the new directory `dest`."""

    services: Services
    actor: Actor
    approval_id: int
    dest: Path
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
    """Check DEST, `prepare` (check the approval, plan what to write: a refusal is audited), create
    DEST.partial, `build` the files in it and publish them (a failure removes the partial directory and
    is audited)."""
    services, actor, details = request.services, request.actor, request.details
    partial = check_destination(request.dest, actor, kind.error)
    with refusal_audited(services, actor, kind.action, details, request.now):
        plan = prepare(request)
    workspace: Workspace | None = None
    try:
        workspace = _make_workspace(partial, request.dest, kind.error)
        return build(request, plan, workspace)
    except BaseException as error:
        if workspace is not None:  # a DEST.partial that appeared meanwhile is someone else's
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
