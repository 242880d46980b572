"""Errors of evidence handling, each with its own exit code so scripts can tell them apart."""

from __future__ import annotations

from ingestd.errors import IngestdError, UsageError
from ingestd.exit_codes import ExitCode


class EvidenceUsageError(UsageError):
    """A wrong argument: unknown id, bad date, missing purpose (exit 2)."""

    template = "{detail}"


class ApprovalRefused(IngestdError):  # noqa: N818 - named in the issue's words
    """Footage access refused for want of a valid approval. `code` names the reason for scripts and audit:
    missing, expired, revoked, not-yet-valid, out-of-scope, confidential."""

    template = "approval {approval}: access refused ({code}): {detail}"
    exit_code = ExitCode.APPROVAL_REFUSED

    @property
    def code(self) -> str:
        return str(self.facts["code"])


class ExportError(IngestdError):
    """The export could not be written (destination exists, not writable, disk full)."""

    template = "export to {dest}: {detail}"
    exit_code = ExitCode.EXPORT_FAILED


class ExportIntegrityError(IngestdError):
    """The store's bytes do not match the catalog: nothing is exported, and this must be investigated."""

    template = (
        "export refused: stored object {blake3} of recording {recording} "
        "is not what the catalog says: {detail}"
    )
    exit_code = ExitCode.EXPORT_INTEGRITY
