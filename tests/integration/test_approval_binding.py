"""Approvals cannot be stretched: the scope is fixed when granted, and only the named user may use one.

Handlers are called directly with a Request, as the dispatcher would after authorising the caller; the
footage is real (a real catalog and object store), and so is every refusal's audit event.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestd.control.handlers_evidence import copy, view
from ingestd.control.handlers_records import tag
from ingestd.evidence.errors import ApprovalRefused, EvidenceUsageError
from tests.integration.test_evidence_copy_view import CASE, recordings, world
from tests.integration.test_evidence_export import approve_for, call, events
from tests.support.evidence import APPROVER, AUDITOR, CLERK, World

__all__ = ["world"]  # the fixture, shared with the copy and view tests


def test_tagging_footage_into_the_case_later_does_not_widen_the_approval(
    world: World, tmp_path: Path
) -> None:
    first, second, outside = recordings(world)
    approval = approve_for(world, case_id=CASE)
    assert approval["scope_recording_ids"] == [first, second]
    call(world, tag, CLERK, recording_ids=[outside], case_id=CASE)
    with pytest.raises(ApprovalRefused) as refused:
        call(
            world, copy, CLERK, approval_id=approval["id"], dest=str(tmp_path / "c1"), recording_ids=[outside]
        )
    assert refused.value.code == "out-of-scope"
    done = call(world, copy, CLERK, approval_id=approval["id"], dest=str(tmp_path / "c2"))
    assert done["recording_ids"] == [first, second]
    [event] = [e for e in events(world, "footage.copy") if e.outcome == "refused"]
    assert (event.details["code"], event.actor_user) == ("out-of-scope", CLERK.user)


def test_only_the_named_user_may_use_an_approval(world: World) -> None:
    ids = recordings(world)
    approval = approve_for(world, recording_ids=[ids[0]])  # for the clerk
    with pytest.raises(ApprovalRefused) as refused:
        call(world, view, AUDITOR, approval_id=approval["id"], recording_id=ids[0])
    assert refused.value.code == "not-grantee"
    assert f"granted to {CLERK.user}, not to {AUDITOR.user}" in str(refused.value)
    [event] = events(world, "footage.view")
    assert (event.outcome, event.details["code"], event.actor_user) == (
        "refused",
        "not-grantee",
        AUDITOR.user,
    )


def test_the_approver_cannot_use_an_approval_they_granted(world: World) -> None:
    ids = recordings(world)
    with pytest.raises(EvidenceUsageError, match="cannot approve their own access"):
        approve_for(world, recording_ids=[ids[0]], grantee=APPROVER.user)
    approval = approve_for(world, recording_ids=[ids[0]])
    with pytest.raises(ApprovalRefused) as refused:
        call(world, view, APPROVER, approval_id=approval["id"], recording_id=ids[0])
    assert refused.value.code == "own-approval"
    [event] = events(world, "footage.view")
    assert (event.outcome, event.details["code"]) == ("refused", "own-approval")


def test_an_approval_must_name_its_user(world: World) -> None:
    ids = recordings(world)
    with pytest.raises(EvidenceUsageError, match="grantee"):
        approve_for(world, recording_ids=[ids[0]], grantee=None)
