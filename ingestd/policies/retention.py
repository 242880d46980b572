"""Retention: how long footage is kept, and which recordings and objects a purge may remove.

Classes (000 art. 15; 003 art. 14; 004 art. 20):

* routine: at least 6 months, by default;
* standard: at least 3 years, for units that keep all footage that long;
* long-term: no expiry while its reason holds: a long-term tag is present, or the class was set to
  long-term by hand (004 art. 20 item 5: "行政执法部门认为应当长期保存的").

Decisions:

* Periods are calendar months and years by date arithmetic in UTC, counted from when the footage was
  stored (保存 is storage). A day the target month lacks (31 Aug + 6 months) rolls forward to the first
  of the next month, never back, because the regulations set a minimum.
* A legal hold blocks deletion whatever the class.
* A recording is deletable once expired *and* noticed at least `notice_days` earlier; at exactly
  `notice_days` after the notice, and exactly at expiry, it is deletable.
* An object (BLAKE3 digest) goes only when every recording that references it is deletable in the
  same plan. `references` must list, per digest, *all* referencing recordings in the catalog, not only
  those offered for purging; inconsistent facts raise rather than risk a deletion.

The plan is a pure function of its inputs, sorted, so a dry run and a real run see the same plan.
"""

from __future__ import annotations

import calendar
import enum
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from ingestd.policies.errors import RetentionError
from store.kinds import RetentionClass
from store.times import utc

# 000 art. 15; 002 art. 13; 004 art. 20 item 1-5; 003 art. 15.
DEFAULT_LONG_TERM_TAGS = frozenset(
    {
        "evidence",
        "complaint",
        "review",
        "litigation",
        "obstruction",
        "violence",
        "emergency",
        "mass-incident",
        "major-case",
    }
)


def normalize_tag(tag: str) -> str:
    """Tags compare as lower-case words joined by hyphens: "Mass incident" is "mass-incident"."""
    return "-".join(tag.replace("_", " ").replace("-", " ").lower().split())


@dataclass(frozen=True, slots=True)
class RetentionRules:
    routine_months: int = 6
    standard_years: int = 3
    notice_days: int = 14
    long_term_tags: frozenset[str] = DEFAULT_LONG_TERM_TAGS


@dataclass(frozen=True, slots=True)
class RetentionFacts:
    """One recording as the purge sees it. `stored_at` is its ingest time."""

    recording_id: int
    blake3: str
    stored_at: datetime
    assigned_class: RetentionClass = RetentionClass.ROUTINE
    tags: frozenset[str] = frozenset()
    legal_hold: bool = False
    notice_given_at: datetime | None = None


def add_months(value: datetime, months: int) -> datetime:
    """`value` plus calendar months in UTC; a missing day rolls forward to the 1st of the next month."""
    start = utc(value, "value")
    index = start.year * 12 + start.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    if start.day <= calendar.monthrange(year, month)[1]:
        return start.replace(year=year, month=month)
    year, month = divmod(index + 1, 12)
    return start.replace(year=year, month=month + 1, day=1)


def long_term_reasons(facts: RetentionFacts, rules: RetentionRules) -> tuple[str, ...]:
    """The tags that force long-term retention, sorted; empty when none does."""
    wanted = {normalize_tag(tag) for tag in rules.long_term_tags}
    return tuple(sorted({normalize_tag(tag) for tag in facts.tags} & wanted))


def effective_class(facts: RetentionFacts, rules: RetentionRules) -> RetentionClass:
    if long_term_reasons(facts, rules):
        return RetentionClass.LONG_TERM
    return facts.assigned_class


def expires_at(facts: RetentionFacts, rules: RetentionRules) -> datetime | None:
    """When the minimum period ends; None for long-term. A legal hold does not change this date."""
    match effective_class(facts, rules):
        case RetentionClass.ROUTINE:
            return add_months(facts.stored_at, rules.routine_months)
        case RetentionClass.STANDARD:
            return add_months(facts.stored_at, 12 * rules.standard_years)
        case RetentionClass.LONG_TERM:
            return None


class KeepReason(enum.StrEnum):
    HELD = "held"
    LONG_TERM = "long-term"
    NOT_DUE = "not-due"  # expiry is more than notice_days away
    NOTICE_PENDING = "notice-pending"  # noticed (or noticed now) less than notice_days ago, or not expired
    STILL_REFERENCED = "still-referenced"  # object: a recording that is not deletable references it


@dataclass(frozen=True, slots=True)
class Notice:
    recording_id: int
    blake3: str
    expires_at: datetime
    delete_not_before: datetime


@dataclass(frozen=True, slots=True)
class KeptRecording:
    recording_id: int
    reason: KeepReason
    detail: str


@dataclass(frozen=True, slots=True)
class KeptObject:
    blake3: str
    reason: KeepReason
    referenced_by: tuple[int, ...]  # the referencing recordings that are not deletable


@dataclass(frozen=True, slots=True)
class PurgePlan:
    """What to do now. Every list is sorted; every recording offered appears in exactly one of
    `deletable_recordings` and `kept` (a noticed-now recording is in `notices` and in `kept`)."""

    notices: tuple[Notice, ...]
    deletable_recordings: tuple[int, ...]
    deletable_objects: tuple[str, ...]
    kept: tuple[KeptRecording, ...]
    kept_objects: tuple[KeptObject, ...]


def plan_purge(
    recordings: Iterable[RetentionFacts],
    references: Mapping[str, Collection[int]],
    now: datetime,
    rules: RetentionRules,
) -> PurgePlan:
    """Decide notices and deletions. Only decides: the executor audits first, then removes."""
    at = utc(now, "now")
    notice_period = timedelta(days=rules.notice_days)
    by_id: dict[int, RetentionFacts] = {}
    for facts in recordings:
        if facts.recording_id in by_id:
            raise RetentionError(detail=f"recording {facts.recording_id} offered twice")
        if facts.recording_id not in references.get(facts.blake3, ()):
            raise RetentionError(
                detail=f"recording {facts.recording_id} is missing from the references of {facts.blake3}"
            )
        by_id[facts.recording_id] = facts

    notices: list[Notice] = []
    deletable: list[int] = []
    kept: list[KeptRecording] = []
    for recording_id in sorted(by_id):
        facts = by_id[recording_id]
        expiry = expires_at(facts, rules)
        if facts.legal_hold:
            kept.append(KeptRecording(recording_id, KeepReason.HELD, "legal hold"))
        elif expiry is None:
            why = ", ".join(long_term_reasons(facts, rules)) or "class set to long-term"
            kept.append(KeptRecording(recording_id, KeepReason.LONG_TERM, why))
        elif at < expiry - notice_period:
            kept.append(KeptRecording(recording_id, KeepReason.NOT_DUE, f"expires {expiry.isoformat()}"))
        elif facts.notice_given_at is None:
            delete_after = max(expiry, at + notice_period)
            notices.append(Notice(recording_id, facts.blake3, expiry, delete_after))
            kept.append(
                KeptRecording(
                    recording_id, KeepReason.NOTICE_PENDING, f"notice now, delete {delete_after.isoformat()}"
                )
            )
        else:
            delete_after = max(expiry, utc(facts.notice_given_at, "notice_given_at") + notice_period)
            if at < delete_after:
                when = f"delete {delete_after.isoformat()}"
                kept.append(KeptRecording(recording_id, KeepReason.NOTICE_PENDING, when))
            else:
                deletable.append(recording_id)

    deletable_set = set(deletable)
    deletable_objects: list[str] = []
    kept_objects: list[KeptObject] = []
    for digest in sorted({by_id[r].blake3 for r in deletable}):
        blockers = tuple(sorted(set(references[digest]) - deletable_set))
        if blockers:
            kept_objects.append(KeptObject(digest, KeepReason.STILL_REFERENCED, blockers))
        else:
            deletable_objects.append(digest)
    return PurgePlan(
        notices=tuple(notices),
        deletable_recordings=tuple(deletable),
        deletable_objects=tuple(deletable_objects),
        kept=tuple(kept),
        kept_objects=tuple(kept_objects),
    )
