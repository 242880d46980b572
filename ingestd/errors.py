"""The application's error root: a message template filled from keyword facts, and an exit code.

Errors from `store/` and `drivers/` keep their own roots (those packages import nothing of ours); the
entry points map all three to messages and exit codes in one place (`ingestd.commandline.run_cli`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ingestd.exit_codes import ExitCode


class IngestdError(Exception):
    """Root of every error raised by `ingestd/`."""

    template: ClassVar[str] = "{detail}"
    exit_code: ClassVar[int] = ExitCode.FAILED

    def __init__(self, **facts: Any) -> None:
        self.facts = facts
        super().__init__(self.template.format(**facts))


class UsageError(IngestdError):
    """The operator asked for something that cannot be done as asked (bad id, missing approval)."""

    exit_code = ExitCode.USAGE
