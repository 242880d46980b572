"""check_approval, payload names, sampling and periods: pure functions."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ingestd.evidence.approvals import FootageAction, check_approval, validate_new_approval
from ingestd.evidence.errors import ApprovalRefused, EvidenceUsageError
from ingestd.evidence.naming import MAX_NAME_BYTES, clean_component, extension_of, payload_name
from ingestd.evidence.periods import parse_period
from ingestd.evidence.spotcheck import sample_ids
from store.models import Confidentiality
from store.times import NaiveDatetimeError

NOW = datetime(2026, 3, 10, 4, 0, tzinfo=UTC)


@dataclass
class Appr:
    id: int = 7
    approver: str = "wang.approver"
    grantee: str | None = "li.clerk"
    scope_recording_ids: list[int] = field(default_factory=list)
    allows_confidential: bool = False
    created_at: datetime = NOW - timedelta(days=1)
    expires_at: datetime = NOW + timedelta(days=1)
    revoked_at: datetime | None = None


@dataclass
class Rec:
    id: int
    case_id: str | None = None
    confidentiality: Confidentiality = Confidentiality.NORMAL


def refused(approval: Appr | None, recordings: list[Rec], now: datetime = NOW, user: str = "li.clerk") -> str:
    with pytest.raises(ApprovalRefused) as error:
        check_approval(approval, recordings, now, FootageAction.EXPORT, user=user)
    return error.value.code


def test_a_valid_approval_covers_its_ids() -> None:
    approval = Appr(scope_recording_ids=[1, 2])
    check_approval(approval, [Rec(1), Rec(2, case_id="C1")], NOW, FootageAction.VIEW, user="li.clerk")


def test_an_approval_is_for_its_grantee_and_never_its_approver() -> None:
    assert refused(Appr(scope_recording_ids=[1]), [Rec(1)], user="zhao.auditor") == "not-grantee"
    assert refused(Appr(scope_recording_ids=[1], grantee=None), [Rec(1)]) == "not-grantee"
    self_granted = Appr(scope_recording_ids=[1], grantee="wang.approver")
    assert refused(self_granted, [Rec(1)], user="wang.approver") == "own-approval"


def test_each_refusal_has_its_code() -> None:
    assert refused(None, [Rec(1)]) == "missing"
    assert refused(Appr(scope_recording_ids=[1], revoked_at=NOW - timedelta(hours=1)), [Rec(1)]) == "revoked"
    assert refused(Appr(scope_recording_ids=[1]), [Rec(1)], NOW + timedelta(days=1)) == "expired"  # at expiry
    assert refused(Appr(scope_recording_ids=[1]), [Rec(1)], NOW - timedelta(days=2)) == "not-yet-valid"
    assert refused(Appr(scope_recording_ids=[1]), [Rec(1), Rec(2)]) == "out-of-scope"
    assert refused(Appr(scope_recording_ids=[2]), [Rec(1, case_id="C2")]) == "out-of-scope"
    secret = Rec(1, confidentiality=Confidentiality.STATE_SECRET)
    assert refused(Appr(scope_recording_ids=[1]), [secret]) == "confidential"
    allowed = Appr(scope_recording_ids=[1], allows_confidential=True)
    check_approval(allowed, [secret], NOW, FootageAction.COPY, user="li.clerk")


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(NaiveDatetimeError):
        check_approval(Appr(), [], NOW.replace(tzinfo=None), FootageAction.VIEW, user="li.clerk")


def test_new_approvals_need_purpose_scope_and_a_bounded_future_expiry() -> None:
    good = validate_new_approval(
        grantee=" li.clerk ",
        purpose=" review ",
        expires_at=NOW + timedelta(days=90),
        recording_ids=[3, 1, 3],
        case_id=None,
        allows_confidential=False,
        requested_by=None,
        now=NOW,
    )
    assert (good.purpose, good.recording_ids, good.grantee) == ("review", (1, 3), "li.clerk")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"purpose": ""}, "purpose"),
        ({"expires_at": NOW}, "future"),
        ({"expires_at": NOW + timedelta(days=90, seconds=1)}, "90 days"),
        ({"recording_ids": [], "case_id": "  "}, "scope"),
        ({"recording_ids": [0]}, "positive"),
        ({"grantee": " "}, "one OS user"),
        ({"grantee": "li clerk"}, "one OS user"),
    ]
    for override, message in cases:
        args: dict[str, Any] = {
            "grantee": "li.clerk",
            "purpose": "p",
            "expires_at": NOW + timedelta(days=1),
            "recording_ids": [1],
            "case_id": None,
            "allows_confidential": False,
            "requested_by": None,
            "now": NOW,
            **override,
        }
        with pytest.raises(EvidenceUsageError, match=message):
            validate_new_approval(**args)


# --- payload names -------------------------------------------------------------------------------------


def test_payload_names_keep_cjk_and_drop_everything_unsafe() -> None:
    name = payload_name(
        recording_id=42,
        officer_name="张\x00三/..\\x",
        officer_no="000123",
        case="案:2026|017*?%0D\n",
        recorded_at=datetime(2026, 3, 1, 16, 0, tzinfo=UTC),
        original_path="DCIM\\100MEDIA\\FILE.MP4",
    )
    assert name == "张_三_x_000123_案_2026_017_0D_20260301T160000Z_r42.mp4"
    assert clean_component("  ..hidden\u200b name\u3000") == "hidden_name"  # format char, ideographic space
    assert clean_component(unicodedata.normalize("NFD", "é")) == "é"  # NFC
    assert extension_of("weird.m p4") == ".bin"
    assert extension_of("noext") == ".bin"
    assert extension_of("a/b.MOV") == ".mov"


def test_payload_names_are_bounded_and_keep_the_id_when_truncated() -> None:
    name = payload_name(
        recording_id=123456,
        officer_name="警" * 200,
        officer_no=None,
        case=None,
        recorded_at=NOW,
        original_path="x.mp4",
    )
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name.endswith("_r123456.mp4")
    unknown = payload_name(
        recording_id=1, officer_name=None, officer_no=None, case=None, recorded_at=NOW, original_path="x"
    )
    assert unknown == "unknown-officer_no-case_20260310T040000Z_r1.bin"


# --- sampling and periods ------------------------------------------------------------------------------


def test_sampling_depends_only_on_seed_and_the_set_of_ids() -> None:
    ids = list(range(1, 500))
    first = sample_ids(ids, "seed", 10)
    assert first == sample_ids(list(reversed(ids)), "seed", 10)
    assert first != sample_ids(ids, "other", 10)
    # A recording added later changes the sample only if it ranks inside it.
    grown = sample_ids([*ids, 10_000], "seed", 10)
    assert grown == first or (10_000 in grown and set(grown) - {10_000} <= set(first))
    assert sample_ids([1, 2], "s", 10) in ([1, 2], [2, 1])


def test_periods_are_local_days_in_utc() -> None:
    march = parse_period(month="2026-03", start=None, end=None, zone="Asia/Shanghai")
    assert (march.start, march.end) == (
        datetime(2026, 2, 28, 16, tzinfo=UTC),
        datetime(2026, 3, 31, 16, tzinfo=UTC),
    )
    december = parse_period(month="2025-12", start=None, end=None, zone="UTC")
    assert december.end == datetime(2026, 1, 1, tzinfo=UTC)
    days = parse_period(month=None, start="2026-03-01", end="2026-03-01", zone="UTC")
    assert days.end - days.start == timedelta(days=1)
    for kwargs, message in [
        ({"month": "2026-03", "start": "2026-03-01", "end": None}, "not both"),
        ({"month": None, "start": "2026-03-01", "end": None}, "both"),
        ({"month": None, "start": "01/03/2026", "end": "2026-03-02"}, "not a date"),
    ]:
        with pytest.raises(EvidenceUsageError, match=message):
            parse_period(zone="UTC", **kwargs)
