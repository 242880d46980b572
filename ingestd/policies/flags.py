"""What a policy asks to raise: a flag decision with a deterministic deduplication key.

The key is built only from the facts that make the flag (never from `now`), so evaluating the same
facts twice yields the same keys and the catalog's unique `dedup_key` turns a re-run into a no-op.
`ingestd.flagging` raises decisions; nothing else writes a flag.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from store.kinds import FlagKind
from store.times import utc

# Catalog column width of `flags.dedup_key`.
DEDUP_KEY_MAX = 255
_HASHED_MARK = "~sha256:"


def bounded_dedup_key(key: str) -> str:
    """`key` itself when shorter than the column, else a readable prefix and the SHA-256 of the whole key.

    Keys built from camera paths can be any length. A kept key is at most DEDUP_KEY_MAX - 1 characters
    and a hashed one exactly DEDUP_KEY_MAX, so a short key can never equal a long key's hashed form,
    whatever names a hostile volume chooses. Length is in characters, as PostgreSQL counts VARCHAR.
    """
    if len(key) < DEDUP_KEY_MAX:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    prefix = key[: DEDUP_KEY_MAX - len(_HASHED_MARK) - len(digest)]
    return f"{prefix}{_HASHED_MARK}{digest}"


# A key starts with its kind, except the dock's own flags, which keep the prefixes their keys had before
# they were decisions: a catalog from then still deduplicates them.
_KEY_PREFIXES: dict[FlagKind, tuple[str, ...]] = {
    FlagKind.FAILED_FILE: ("failed:", "rejected:"),
    FlagKind.IDENTITY_MISMATCH: ("identity:", "officer:"),
}


@dataclass(frozen=True, slots=True)
class FlagDecision:
    """One flag to raise. `details` holds JSON-safe values only (str, int, float, bool, None).

    A key may be longer than the catalog column (it can hold a camera path): the flag service stores
    its `bounded_dedup_key`."""

    kind: FlagKind
    dedup_key: str
    raised_at: datetime
    camera_serial: str | None = None
    camera_id: int | None = None
    recording_id: int | None = None
    details: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.dedup_key.startswith(_KEY_PREFIXES.get(self.kind, (f"{self.kind.value}:",))):
            raise ValueError(f"malformed dedup key {self.dedup_key!r} for a {self.kind.value} flag")
        utc(self.raised_at, "raised_at")


def new_flags(decisions: Iterable[FlagDecision], existing_keys: Collection[str]) -> list[FlagDecision]:
    """The decisions not yet raised, first occurrence of each key kept, in input order."""
    seen = set(existing_keys)
    fresh: list[FlagDecision] = []
    for decision in decisions:
        if decision.dedup_key not in seen:
            seen.add(decision.dedup_key)
            fresh.append(decision)
    return fresh
