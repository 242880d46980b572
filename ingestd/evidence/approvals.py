"""Approvals for viewing, copying or exporting footage (000 art. 16; 002 art. 16; 004 art. 20).

Guarantees: `check_approval` is a pure function of the approval, the user, the recordings and `now`;
every refusal names its reason as a stable code. An approval is for the one OS user it names (its
grantee), never its approver. Its scope is fixed when it is granted: the recordings it lists and, when it
names a case, the recordings tagged with that case at that moment; tagging more footage into the case
later does not widen it. Confidential recordings (anything but `normal`) are covered only when the
approval says so.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from ingestd.evidence.errors import ApprovalRefused, EvidenceUsageError
from store.audit import Actor, AuditLog
from store.catalog import Catalog
from store.models import Approval, Confidentiality, Recording
from store.times import iso, utc

MAX_APPROVAL_VALIDITY = timedelta(days=90)
PURPOSE_MAX = 2000
CASE_ID_MAX = 64
USER_MAX = 64


class FootageAction(enum.StrEnum):
    VIEW = "view"
    COPY = "copy"
    EXPORT = "export"


class ApprovalLike(Protocol):
    """What `check_approval` reads of an approval (an `Approval` row fits)."""

    @property
    def id(self) -> int: ...
    @property
    def approver(self) -> str: ...
    @property
    def grantee(self) -> str | None: ...
    @property
    def scope_recording_ids(self) -> list[int]: ...
    @property
    def allows_confidential(self) -> bool: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def expires_at(self) -> datetime: ...
    @property
    def revoked_at(self) -> datetime | None: ...


class RecordingLike(Protocol):
    """What `check_approval` reads of a recording (a `Recording` row fits)."""

    @property
    def id(self) -> int: ...
    @property
    def case_id(self) -> str | None: ...
    @property
    def confidentiality(self) -> Confidentiality: ...


def in_scope(approval: ApprovalLike, recording: RecordingLike) -> bool:
    """By id only: a case's recordings were resolved to ids when the approval was granted."""
    return recording.id in set(approval.scope_recording_ids or ())


def check_approval(
    approval: ApprovalLike | None,
    recordings: Sequence[RecordingLike],
    now: datetime,
    action: FootageAction,
    *,
    user: str,
    approval_id: int | None = None,
) -> None:
    """Return if `approval` lets `user` `action` every one of `recordings` at `now`; else raise
    ApprovalRefused with code missing, revoked, not-yet-valid, expired, own-approval, not-grantee,
    out-of-scope or confidential."""
    at = utc(now, "now")
    if approval is None:
        raise ApprovalRefused(
            approval=approval_id if approval_id is not None else "-",
            code="missing",
            detail=f"{action.value} needs an approval and none was found",
        )
    ident = approval.id
    if approval.revoked_at is not None:
        raise ApprovalRefused(approval=ident, code="revoked", detail=f"revoked at {iso(approval.revoked_at)}")
    if at < utc(approval.created_at, "created_at"):
        raise ApprovalRefused(
            approval=ident, code="not-yet-valid", detail=f"valid from {iso(approval.created_at)}"
        )
    if at >= utc(approval.expires_at, "expires_at"):
        raise ApprovalRefused(approval=ident, code="expired", detail=f"expired at {iso(approval.expires_at)}")
    if user == approval.approver:
        raise ApprovalRefused(
            approval=ident, code="own-approval", detail=f"{user} granted it and cannot use it themselves"
        )
    if user != approval.grantee:
        raise ApprovalRefused(
            approval=ident,
            code="not-grantee",
            detail=f"it was granted to {approval.grantee or 'nobody'}, not to {user}",
        )
    outside = sorted(r.id for r in recordings if not in_scope(approval, r))
    if outside:
        raise ApprovalRefused(
            approval=ident, code="out-of-scope", detail=f"recording(s) {_ids(outside)} are not in its scope"
        )
    if not approval.allows_confidential:
        secret = sorted(r.id for r in recordings if r.confidentiality is not Confidentiality.NORMAL)
        if secret:
            raise ApprovalRefused(
                approval=ident,
                code="confidential",
                detail=f"recording(s) {_ids(secret)} are confidential and the approval "
                "does not cover confidential footage",
            )


def _ids(ids: Collection[int], limit: int = 20) -> str:
    shown = ", ".join(str(i) for i in list(ids)[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


# --- validating a new approval (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class NewApproval:
    purpose: str
    expires_at: datetime
    recording_ids: tuple[int, ...]
    case_id: str | None
    allows_confidential: bool
    requested_by: str | None
    grantee: str


def validate_new_approval(
    *,
    grantee: str,
    purpose: str,
    expires_at: datetime,
    recording_ids: Iterable[int],
    case_id: str | None,
    allows_confidential: bool,
    requested_by: str | None,
    now: datetime,
    max_validity: timedelta = MAX_APPROVAL_VALIDITY,
) -> NewApproval:
    """The approval as it will be stored, or EvidenceUsageError saying what is wrong with the request."""
    purpose = purpose.strip()
    if not purpose:
        raise EvidenceUsageError(detail="an approval needs a purpose (--purpose)")
    if len(purpose) > PURPOSE_MAX:
        raise EvidenceUsageError(detail=f"purpose is {len(purpose)} characters, at most {PURPOSE_MAX}")
    at = utc(now, "now")
    expires = utc(expires_at, "expires_at")
    if expires <= at:
        raise EvidenceUsageError(detail=f"expiry {iso(expires)} is not in the future")
    if expires - at > max_validity:
        raise EvidenceUsageError(
            detail=f"expiry {iso(expires)} is more than {max_validity.days} days away; "
            "approvals are short-lived"
        )
    ids = tuple(sorted(set(recording_ids)))
    if any(i <= 0 for i in ids):
        raise EvidenceUsageError(detail="recording ids are positive integers")
    case = case_id.strip() if case_id else None
    if case is not None and len(case) > CASE_ID_MAX:
        raise EvidenceUsageError(detail=f"case id is longer than {CASE_ID_MAX} characters")
    if not ids and not case:
        raise EvidenceUsageError(
            detail="an approval needs a scope: recording ids (--recording) or a case (--case)"
        )
    requester = requested_by.strip() if requested_by else None
    if requester is not None and len(requester) > USER_MAX:
        raise EvidenceUsageError(detail=f"requested-by is longer than {USER_MAX} characters")
    user = grantee.strip()
    if not user or len(user) > USER_MAX or any(c.isspace() or not c.isprintable() for c in user):
        raise EvidenceUsageError(
            detail=f"an approval is for one OS user (--for USER, 1 to {USER_MAX} characters, no spaces)"
        )
    return NewApproval(purpose, expires, ids, case or None, allows_confidential, requester or None, user)


# --- catalog operations -------------------------------------------------------------------------------


def approval_dict(approval: Approval, now: datetime | None = None) -> dict[str, Any]:
    state = "valid"
    if approval.revoked_at is not None:
        state = "revoked"
    elif now is not None and utc(now) >= utc(approval.expires_at):
        state = "expired"
    return {
        "id": approval.id,
        "approver": approval.approver,
        "grantee": approval.grantee,
        "requested_by": approval.requested_by,
        "purpose": approval.purpose,
        "scope_case_id": approval.scope_case_id,
        "scope_recording_ids": list(approval.scope_recording_ids or []),
        "allows_confidential": approval.allows_confidential,
        "created_at": iso(approval.created_at),
        "expires_at": iso(approval.expires_at),
        "revoked_at": iso(approval.revoked_at) if approval.revoked_at else None,
        "state": state,
    }


def uncovered_confidential(session: Session, approval: Approval) -> list[int]:
    """The confidential recordings in `approval`'s scope that it does not cover (no --allow-confidential):
    using it on them is refused, so the approver is told now rather than the grantee later."""
    if approval.allows_confidential or not approval.scope_recording_ids:
        return []
    return sorted(
        session.scalars(
            select(Recording.id).where(
                Recording.id.in_(approval.scope_recording_ids),
                Recording.confidentiality != Confidentiality.NORMAL,
            )
        )
    )


def create_approval(
    session: Session, audit: AuditLog, actor: Actor, new: NewApproval, *, now: datetime
) -> Approval:
    """Store `new`, approved by `actor`, with its audit event in the same transaction. Every listed
    recording must exist, and a case must have at least one recording (a typo would approve nothing).
    The case is resolved to the recordings tagged with it now: that is the scope, for good."""
    if new.grantee == actor.user:
        raise EvidenceUsageError(detail=f"{actor.user} cannot approve their own access to footage")
    scope = set(new.recording_ids)
    if new.recording_ids:
        found = set(session.scalars(select(Recording.id).where(Recording.id.in_(new.recording_ids))))
        unknown = sorted(set(new.recording_ids) - found)
        if unknown:
            raise EvidenceUsageError(detail=f"no recording with id {_ids(unknown)}")
    if new.case_id is not None:
        tagged = set(session.scalars(select(Recording.id).where(Recording.case_id == new.case_id)))
        if not tagged:
            raise EvidenceUsageError(detail=f"no recording is tagged with case {new.case_id!r}")
        scope |= tagged
    approval = Approval(
        approver=actor.user,
        grantee=new.grantee,
        requested_by=new.requested_by,
        purpose=new.purpose,
        scope_case_id=new.case_id,
        scope_recording_ids=sorted(scope),
        allows_confidential=new.allows_confidential,
        created_at=now,
        expires_at=new.expires_at,
        revoked_at=None,
    )
    session.add(approval)
    session.flush()
    details = {k: v for k, v in approval_dict(approval).items() if k not in ("id", "state")}
    audit.append(
        session,
        actor=actor,
        action="approval.create",
        subject=f"approval:{approval.id}",
        details=details,
        at=now,
    )
    return approval


def revoke_approval(
    session: Session, audit: AuditLog, actor: Actor, approval_id: int, *, reason: str, now: datetime
) -> Approval:
    approval = session.get(Approval, approval_id, with_for_update=True)
    if approval is None:
        raise EvidenceUsageError(detail=f"no approval with id {approval_id}")
    if approval.revoked_at is not None:
        revoked = iso(approval.revoked_at)
        raise EvidenceUsageError(detail=f"approval {approval_id} was already revoked at {revoked}")
    approval.revoked_at = now
    session.flush()
    audit.append(
        session,
        actor=actor,
        action="approval.revoke",
        subject=f"approval:{approval_id}",
        details={"reason": reason},
        at=now,
    )
    return approval


def scope_recordings(session: Session, approval: Approval) -> list[Recording]:
    """Every recording the approval covers, by id."""
    if not approval.scope_recording_ids:
        return []
    wanted = list(approval.scope_recording_ids)
    return list(session.scalars(select(Recording).where(Recording.id.in_(wanted)).order_by(Recording.id)))


def audit_refusal(
    catalog: Catalog,
    audit: AuditLog,
    actor: Actor,
    refused: ApprovalRefused,
    *,
    action: FootageAction,
    details: dict[str, Any],
    now: datetime,
) -> None:
    """Record a refused footage access in a transaction of its own, so it survives the refusal."""
    with catalog.transaction() as session:
        audit.append(
            session,
            actor=actor,
            action=f"footage.{action.value}",
            subject=f"approval:{refused.facts.get('approval')}",
            outcome="refused",
            details={"code": refused.code, "reason": str(refused), **details},
            at=now,
        )
