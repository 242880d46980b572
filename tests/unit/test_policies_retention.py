"""Retention classes, expiry by calendar months, and the purge plan's guarantees."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from ingestd.policies.errors import RetentionError
from ingestd.policies.retention import (
    KeepReason,
    KeptObject,
    KeptRecording,
    Notice,
    PurgePlan,
    RetentionFacts,
    RetentionRules,
    add_months,
    effective_class,
    expires_at,
    plan_purge,
)
from store.models import RetentionClass

RULES = RetentionRules()
NOTICE = timedelta(days=RULES.notice_days)
US = timedelta(microseconds=1)
STORED = datetime(2025, 9, 1, 8, 0, tzinfo=UTC)
EXPIRY = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)  # routine: 6 calendar months after STORED
NOW = EXPIRY + timedelta(days=30)


def digest(n: int) -> str:
    return f"{n:064x}"


def rec(
    recording_id: int,
    obj: int | None = None,
    *,
    stored_at: datetime = STORED,
    assigned: RetentionClass = RetentionClass.ROUTINE,
    tags: frozenset[str] = frozenset(),
    hold: bool = False,
    noticed: datetime | None = None,
) -> RetentionFacts:
    return RetentionFacts(
        recording_id=recording_id,
        blake3=digest(recording_id if obj is None else obj),
        stored_at=stored_at,
        assigned_class=assigned,
        tags=tags,
        legal_hold=hold,
        notice_given_at=noticed,
    )


def refs(recordings: list[RetentionFacts], **extra: tuple[int, ...]) -> dict[str, set[int]]:
    """The full reference table, plus references by recordings not offered (`d<n>=(ids)`)."""
    table: dict[str, set[int]] = defaultdict(set)
    for facts in recordings:
        table[facts.blake3].add(facts.recording_id)
    for key, ids in extra.items():
        table[digest(int(key[1:]))].update(ids)
    return dict(table)


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (datetime(2026, 1, 15, 8, tzinfo=UTC), 6, datetime(2026, 7, 15, 8, tzinfo=UTC)),
        (datetime(2026, 10, 15, 8, tzinfo=UTC), 6, datetime(2027, 4, 15, 8, tzinfo=UTC)),
        # No 31 February: roll forward to 1 March, never back to 28 February.
        (datetime(2025, 8, 31, 23, 59, tzinfo=UTC), 6, datetime(2026, 3, 1, 23, 59, tzinfo=UTC)),
        (datetime(2024, 2, 29, 12, tzinfo=UTC), 36, datetime(2027, 3, 1, 12, tzinfo=UTC)),
        (datetime(2024, 2, 29, 12, tzinfo=UTC), 48, datetime(2028, 2, 29, 12, tzinfo=UTC)),
        (datetime(2025, 12, 31, tzinfo=UTC), 2, datetime(2026, 3, 1, tzinfo=UTC)),
    ],
)
def test_calendar_months_never_fall_short(start: datetime, months: int, expected: datetime) -> None:
    assert add_months(start, months) == expected
    assert add_months(start, months) - start >= timedelta(days=28 * months)


def test_classes_and_expiry() -> None:
    assert expires_at(rec(1), RULES) == EXPIRY
    standard = rec(1, assigned=RetentionClass.STANDARD)
    assert expires_at(standard, RULES) == datetime(2028, 9, 1, 8, 0, tzinfo=UTC)
    assert expires_at(rec(1, assigned=RetentionClass.LONG_TERM), RULES) is None


@pytest.mark.parametrize(
    "tag", ["evidence", "complaint", "review", "litigation", "obstruction", "violence", "emergency",
            "mass-incident", "major-case", "Mass incident", "MAJOR_CASE"]
)  # fmt: skip
def test_every_long_term_tag_forces_long_term_until_removed(tag: str) -> None:
    tagged = rec(1, assigned=RetentionClass.ROUTINE, tags=frozenset({tag, "traffic"}))
    assert effective_class(tagged, RULES) is RetentionClass.LONG_TERM
    assert expires_at(tagged, RULES) is None
    untagged = rec(1, tags=frozenset({"traffic"}))  # the reason no longer holds
    assert effective_class(untagged, RULES) is RetentionClass.ROUTINE


def test_the_long_term_tag_set_is_configurable() -> None:
    rules = RetentionRules(long_term_tags=frozenset({"petition"}))
    assert effective_class(rec(1, tags=frozenset({"petition"})), rules) is RetentionClass.LONG_TERM
    assert effective_class(rec(1, tags=frozenset({"evidence"})), rules) is RetentionClass.ROUTINE


def test_the_purge_keeps_held_long_term_and_still_referenced_objects() -> None:
    noticed = NOW - NOTICE
    offered = [
        rec(1, noticed=noticed),  # expired, noticed 14 days ago: goes, with its object
        rec(2, noticed=noticed, hold=True),  # held
        rec(3, noticed=noticed, tags=frozenset({"evidence"})),  # long-term by tag
        rec(4, noticed=noticed, assigned=RetentionClass.LONG_TERM),  # long-term by hand
        rec(5, 50, noticed=noticed),  # shares object 50 with 6, which is held
        rec(6, 50, noticed=noticed, hold=True),
        rec(7, 70, noticed=noticed),  # object 70 is also referenced by 99, not offered
        rec(8, 80, noticed=noticed),  # object 80 shared by 8 and 9, both deletable
        rec(9, 80, noticed=noticed),
    ]
    plan = plan_purge(offered, refs(offered, d70=(99,)), NOW, RULES)
    assert plan.deletable_recordings == (1, 5, 7, 8, 9)
    assert plan.deletable_objects == (digest(1), digest(80))
    assert plan.kept_objects == (
        KeptObject(digest(50), KeepReason.STILL_REFERENCED, (6,)),
        KeptObject(digest(70), KeepReason.STILL_REFERENCED, (99,)),
    )
    reasons = {k.recording_id: k.reason for k in plan.kept}
    assert reasons == {
        2: KeepReason.HELD,
        3: KeepReason.LONG_TERM,
        4: KeepReason.LONG_TERM,
        6: KeepReason.HELD,
    }
    assert plan.notices == ()
    protected = {digest(n) for n in (2, 3, 4, 50, 70)}
    assert not protected & set(plan.deletable_objects)


def test_a_notice_comes_notice_days_before_deletion() -> None:
    # Not yet within the notice period: nothing to do.
    early = plan_purge([rec(1)], refs([rec(1)]), EXPIRY - NOTICE - US, RULES)
    assert early.notices == ()
    assert early.kept == (KeptRecording(1, KeepReason.NOT_DUE, f"expires {EXPIRY.isoformat()}"),)
    # Exactly notice_days before expiry: the notice is due, deletion not before expiry.
    notice_at = EXPIRY - NOTICE
    due = plan_purge([rec(1)], refs([rec(1)]), notice_at, RULES)
    assert due.notices == (Notice(1, digest(1), EXPIRY, EXPIRY),)
    assert due.deletable_recordings == ()
    # Noticed then; one microsecond before expiry it is still kept; at expiry it goes.
    noticed = [rec(1, noticed=notice_at)]
    before = plan_purge(noticed, refs(noticed), EXPIRY - US, RULES)
    assert before.deletable_recordings == ()
    assert before.kept[0].reason is KeepReason.NOTICE_PENDING
    assert before.notices == ()  # not noticed twice
    at_expiry = plan_purge(noticed, refs(noticed), EXPIRY, RULES)
    assert at_expiry.deletable_recordings == (1,)
    assert at_expiry.deletable_objects == (digest(1),)


def test_an_expired_recording_never_noticed_waits_the_full_notice_period() -> None:
    late = [rec(1)]
    plan = plan_purge(late, refs(late), NOW, RULES)
    assert plan.deletable_recordings == ()
    assert plan.notices == (Notice(1, digest(1), EXPIRY, NOW + NOTICE),)
    noticed = [rec(1, noticed=NOW)]
    assert plan_purge(noticed, refs(noticed), NOW + NOTICE - US, RULES).deletable_recordings == ()
    assert plan_purge(noticed, refs(noticed), NOW + NOTICE, RULES).deletable_recordings == (1,)


def test_inconsistent_facts_raise_rather_than_delete() -> None:
    with pytest.raises(RetentionError, match="offered twice"):
        plan_purge([rec(1), rec(1)], refs([rec(1)]), NOW, RULES)
    with pytest.raises(RetentionError, match="missing from the references"):
        plan_purge([rec(1, noticed=NOW - NOTICE)], {}, NOW, RULES)


def random_catalog(seed: int) -> list[RetentionFacts]:
    rng = random.Random(seed)
    return [
        rec(
            i,
            rng.randrange(60),
            stored_at=STORED + timedelta(days=rng.randrange(-400, 200)),
            assigned=rng.choice(list(RetentionClass)),
            tags=frozenset(rng.sample(["evidence", "traffic", "review", "patrol"], rng.randrange(3))),
            hold=rng.random() < 0.1,
            noticed=rng.choice([None, NOW - timedelta(days=rng.randrange(30))]),
        )
        for i in range(120)
    ]


@pytest.mark.parametrize("seed", range(20))
def test_invariants_hold_on_random_catalogs(seed: int) -> None:
    catalog = random_catalog(seed)
    offered = catalog[:100]  # the other 20 still reference objects but are not offered
    plan = plan_purge(offered, refs(catalog), NOW, RULES)
    by_id = {f.recording_id: f for f in catalog}
    deletable = set(plan.deletable_recordings)
    for recording_id in deletable:
        facts = by_id[recording_id]
        assert not facts.legal_hold
        assert effective_class(facts, RULES) is not RetentionClass.LONG_TERM
        assert facts.notice_given_at is not None
        assert NOW - facts.notice_given_at >= NOTICE
    for obj in plan.deletable_objects:
        assert {f.recording_id for f in catalog if f.blake3 == obj} <= deletable
    assert deletable.isdisjoint(k.recording_id for k in plan.kept)
    assert deletable | {k.recording_id for k in plan.kept} == {f.recording_id for f in offered}


def test_the_plan_is_a_pure_function_of_its_inputs() -> None:
    catalog = random_catalog(3)
    references = refs(catalog)
    first = plan_purge(catalog, references, NOW, RULES)
    shuffled = catalog[:]
    random.Random(1).shuffle(shuffled)
    with time_machine.travel(datetime(2045, 1, 1, tzinfo=UTC), tick=False):
        second = plan_purge(shuffled, references, NOW, RULES)
    assert isinstance(second, PurgePlan)
    assert second == first
    # The scenario exercises every outcome, so equality is not trivially between empty plans.
    assert first.deletable_recordings
    assert first.deletable_objects
    assert first.kept_objects
    assert first.notices
