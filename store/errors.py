"""The store's error root. Each error formats a message template from keyword facts and has an exit code.

Integrity errors (a digest that does not match, a chain that does not verify) must never be caught by a
broad handler: callers catch `StoreError` only where they also re-raise `IntegrityError`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class StoreError(Exception):
    """Root of every error raised by `store/`."""

    template: ClassVar[str] = "{detail}"
    exit_code: ClassVar[int] = 30

    def __init__(self, **facts: Any) -> None:
        self.facts = facts
        super().__init__(self.template.format(**facts))


class IntegrityError(StoreError):
    """Stored evidence does not match what was recorded. Never swallowed."""

    template = "integrity: {detail}"
    exit_code = 3
