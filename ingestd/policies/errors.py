"""Errors raised by the policies: a refused request (exit 2). A naive datetime, a caller's bug, raises
`store.times.NaiveDatetimeError` (exit 70)."""

from __future__ import annotations

from ingestd.errors import IngestdError
from ingestd.exit_codes import ExitCode


class PolicyError(IngestdError):
    """Root of the policy errors. A refusal is the operator's to fix, hence the usage exit code."""

    exit_code = ExitCode.USAGE


class ExtensionRefusedError(PolicyError):
    """A deadline extension that the regulations do not allow (003 art. 11: at most 3 working days)."""

    template = "deadline extension refused: {detail}"


class CalendarError(PolicyError):
    """The working-day calendar cannot be built from the settings given."""

    template = "working-day calendar: {detail}"


class AttributionError(PolicyError):
    """A check-out cannot be attributed as asked."""

    template = "custody attribution refused: {detail}"


class RetentionError(PolicyError):
    """The facts handed to the retention policy contradict each other."""

    template = "retention: {detail}"
