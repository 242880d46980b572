"""The dispatcher on a real catalog: what a control request can make the audit trail keep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ingestd.control.auth import Caller
from ingestd.control.denials import DenialAggregator
from ingestd.control.dispatch import MAX_AUDIT_DETAILS_BYTES, audit_repeated, dispatch
from ingestd.control.protocol import Message
from ingestd.control.server import load_handlers
from store.audit import Role
from store.catalog import Catalog
from store.models import AuditEvent
from tests.support.evidence import NOW, make_services

NOBODY = Caller(user="nobody.x", uid=4242, pid=7, groups=frozenset(), roles=frozenset())
ADMIN = Caller(user="root", uid=0, pid=8, groups=frozenset(), roles=frozenset({Role.ADMIN}))

HOSTILE_ARGS: list[dict[str, Any]] = [
    {f"k{i}": i for i in range(50_000)},  # many small keys
    {"键" * 100_000: 1},  # one huge CJK key
    {"device": "Z" * 900_000},  # one huge value, echoed in the handler's error
    {"device": "\U0001f600" * 200_000, "password": "123456"},  # astral characters, and a secret
]


@pytest.fixture(autouse=True)
def handlers() -> None:
    load_handlers()


def stored_details(catalog: Catalog) -> list[tuple[str, str, dict[str, Any]]]:
    with catalog.transaction() as db:
        rows = db.execute(select(AuditEvent.action, AuditEvent.outcome, AuditEvent.details)).all()
        return [(row.action, row.outcome, row.details) for row in rows]


@pytest.mark.parametrize("args", HOSTILE_ARGS, ids=["many-keys", "huge-key", "huge-value", "astral"])
def test_no_audit_event_exceeds_a_few_kib_whatever_the_request(
    catalog: Catalog, tmp_path: Path, args: dict[str, Any]
) -> None:
    services = make_services(catalog, tmp_path)
    denials = DenialAggregator(60.0)
    denied = dispatch(services, NOBODY, Message(1, "footage", args), NOW, denials=denials, mono=0.0)
    assert denied["error"]["code"] == "permission-denied"
    failed = dispatch(services, ADMIN, Message(2, "footage", args), NOW, denials=denials, mono=0.0)
    assert failed["ok"] is False  # footage is audited even when it fails
    events = stored_details(catalog)
    assert [(action, outcome) for action, outcome, _ in events] == [
        ("ctl.footage", "denied"),
        ("ctl.footage", "error"),
    ]
    for _, _, details in events:
        size = len(json.dumps(details, ensure_ascii=False).encode())
        assert size <= MAX_AUDIT_DETAILS_BYTES, size
        assert "123456" not in json.dumps(details)
        assert details["args"]["truncated"] is True
        assert len(details["args"]["sha256"]) == 64


def test_repeated_denials_of_one_kind_are_one_event_per_interval_with_their_count(
    catalog: Catalog, tmp_path: Path
) -> None:
    services = make_services(catalog, tmp_path)
    denials = DenialAggregator(60.0)

    def deny(command: str, mono: float) -> None:
        answer = dispatch(services, NOBODY, Message(None, command, {}), NOW, denials=denials, mono=mono)
        assert answer["error"]["exit_code"] == 13

    for i in range(100):
        deny("status", i * 0.5)  # the first is audited at once, the other 99 counted
        deny(f"no-such-{i}", i * 0.5)  # made-up names are one kind, not one event each
    assert [(a, o) for a, o, _ in stored_details(catalog)] == [
        ("ctl.status", "denied"),
        ("ctl.unknown", "denied"),
    ]
    assert denials.due(59.0) == []
    for repeated in denials.due(60.0):
        audit_repeated(services, repeated, NOW)
    for i in range(50):
        deny("status", 61.0 + i)  # still hammering: counted only, into the next interval
    for repeated in denials.due(121.0):
        audit_repeated(services, repeated, NOW)
    assert denials.due(182.0) == []  # a quiet interval ends with nothing to write, and is forgotten
    deny("status", 300.0)  # so the next refusal is audited at once again
    events = stored_details(catalog)
    summary = [(a, d.get("count")) for a, _, d in events]
    assert summary == [
        ("ctl.status", None),
        ("ctl.unknown", None),
        ("ctl.status", 99),
        ("ctl.unknown", 99),
        ("ctl.status", 50),
        ("ctl.status", None),
    ]
    assert all(outcome == "denied" for _, outcome, _ in events)
    assert "no ingestd role" in events[2][2]["error"]


def test_an_admin_who_is_not_an_approver_cannot_approve(catalog: Catalog, tmp_path: Path) -> None:
    """Separation of duties: approving footage access is the approver's alone, even against an admin."""
    services = make_services(catalog, tmp_path)
    args = {"purpose": "court", "recording_ids": [1], "expires_in": "1h", "grantee": "li.clerk"}
    answer = dispatch(
        services, ADMIN, Message(1, "approve", args), NOW, denials=DenialAggregator(60.0), mono=0.0
    )
    assert answer["ok"] is False
    assert answer["error"]["code"] == "permission-denied"
    assert [(a, o) for a, o, _ in stored_details(catalog)] == [("ctl.approve", "denied")]


def test_only_an_admin_or_an_auditor_records_a_verify_and_the_figures_must_agree(
    catalog: Catalog, tmp_path: Path
) -> None:
    services = make_services(catalog, tmp_path)
    denials = DenialAggregator(60.0)
    clerk = Caller(user="li.clerk", uid=4242, pid=8, groups=frozenset(), roles=frozenset({Role.CLERK}))
    auditor = Caller(user="wang.aud", uid=4243, pid=9, groups=frozenset(), roles=frozenset({Role.AUDITOR}))
    clean = {"clean": True, "events_checked": 5, "objects_checked": 0}

    def record(caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        return dispatch(services, caller, Message(1, "verify.record", args), NOW, denials=denials, mono=0.0)

    assert record(clerk, clean)["error"]["exit_code"] == 13  # the figures are the caller's word
    lying = record(ADMIN, {**clean, "problems": 2})
    assert lying["error"]["exit_code"] == 2
    assert "clean must be true exactly when problems is 0" in lying["error"]["message"]
    done = record(ADMIN, clean)
    assert done["ok"] is True, done
    assert done["result"]["last_verify"]["by"] == "root"
    assert done["result"]["last_verify"]["events_checked"] == 5
    by_auditor = record(auditor, clean)  # verifying is an auditor's job too
    assert by_auditor["result"]["last_verify"]["by"] == "wang.aud"
    assert [(a, o) for a, o, _ in stored_details(catalog)] == [
        ("ctl.verify.record", "denied"),
        ("ctl.verify.record", "error"),
        ("verify.run", "ok"),
        ("ctl.verify.record", "ok"),
        ("verify.run", "ok"),
        ("ctl.verify.record", "ok"),
    ]
