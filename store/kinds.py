"""The catalog's enumerations that the pure policies decide about, free of any dependency.

`store.models` maps them to columns; a policy imports them from here, so deciding a flag or a
retention class loads neither SQLAlchemy nor the object store.
"""

from __future__ import annotations

import enum


class RetentionClass(enum.StrEnum):
    ROUTINE = "routine"
    STANDARD = "standard"
    LONG_TERM = "long-term"


class CustodyKind(enum.StrEnum):
    CHECK_IN = "check-in"
    CHECK_OUT = "check-out"


class FlagKind(enum.StrEnum):
    LATE = "late"
    OVERDUE = "overdue"
    GAP = "gap"
    INTERRUPTED = "interrupted"
    DRIFT = "drift"
    FAILED_FILE = "failed-file"
    IDENTITY_MISMATCH = "identity-mismatch"
    STORE_FULL = "store-full"
    UNREPLICATED = "unreplicated"  # not replicated and verified within vault.replication_deadline_hours
