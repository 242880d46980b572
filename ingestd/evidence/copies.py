"""Copying approved footage as plain files into a new directory (000 art. 16; 002 art. 16; 004 art. 20).

Guarantees (besides those of every delivery, see `ingestd.evidence.delivery`):
- Each file is hashed (BLAKE3 and SHA-256) as it is copied; bytes that differ from the catalog refuse the
  whole copy (exit 16) and leave nothing behind.
- DEST holds the recordings, each named like in an export, and `SHA256SUMS` (`sha256sum -c` format) with
  the digests the copy has just proven; every file is mode 0444 and, like DEST, the caller's.
- The approval is checked again and a `footage.copy` audit event (approval, recordings, destination,
  files) committed before the files are handed to the caller.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ingestd.evidence.approvals import FootageAction
from ingestd.evidence.bag import MiB, PayloadItem, copy_proving, write_new
from ingestd.evidence.delivery import (
    Delivery,
    DeliveryRequest,
    Workspace,
    deliver,
    give_to,
    payload_items,
)
from ingestd.evidence.errors import ExportError, ExportIntegrityError
from ingestd.stream_back import open_object

SUMS_FILE = "SHA256SUMS"
FILE_MODE = 0o444


class CopyError(ExportError):
    """The copy could not be written (DEST exists, parent not the caller's, disk full): exit 15."""

    template = "copy to {dest}: {detail}"
    wire_code = "copy"


class CopyIntegrityError(ExportIntegrityError):
    """The store's bytes do not match the catalog: nothing is copied, and this must be investigated."""

    template = (
        "copy refused: stored object {blake3} of recording {recording} is not what the catalog says: {detail}"
    )
    wire_code = "copy-integrity"


COPY = Delivery(FootageAction.COPY, audit_action="footage.copy", error=CopyError)


@dataclass(frozen=True)
class CopyOutcome:
    destination: str
    approval_id: int
    recording_ids: tuple[int, ...]
    files: tuple[str, ...]
    bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "approval_id": self.approval_id,
            "recording_ids": list(self.recording_ids),
            "files": list(self.files),
            "bytes": self.bytes,
            "sums_file": SUMS_FILE,
        }


@dataclass(frozen=True)
class _Selection:
    approval_id: int
    items: tuple[PayloadItem, ...]

    @property
    def recording_ids(self) -> tuple[int, ...]:
        return tuple(i.recording_id for i in self.items)


def sums_text(items: Sequence[PayloadItem]) -> str:
    """`sha256sum -c` input. Payload names hold no whitespace, backslash or line break (naming.py), so
    they need no escaping."""
    return "".join(f"{i.sha256}  {i.name}\n" for i in sorted(items, key=lambda i: i.name))


def _select(request: DeliveryRequest) -> _Selection:
    with request.services.catalog.transaction() as db:
        _, rows = request.approved_recordings(db, FootageAction.COPY)
        return _Selection(request.approval_id, payload_items(db, rows))


def _copy_and_record(request: DeliveryRequest, selection: _Selection, workspace: Workspace) -> CopyOutcome:
    services = request.services
    chunk_size = services.config.store.chunk_mib * MiB
    with services.in_use.reading(item.blake3 for item in selection.items):
        for item in selection.items:
            # An evicted recording streams from the vault; a mismatch there raises its own integrity error.
            with open_object(services, item.blake3) as source:
                try:
                    copy_proving(source, workspace.fd, item, FILE_MODE, chunk_size)
                except ExportIntegrityError as mismatch:
                    raise CopyIntegrityError(**mismatch.facts) from None
    write_new(workspace.fd, SUMS_FILE, sums_text(selection.items).encode("utf-8"), FILE_MODE)
    os.fsync(workspace.fd)
    files = tuple(sorted(i.name for i in selection.items))
    total = sum(i.size for i in selection.items)
    with services.catalog.transaction() as db:
        request.recheck_approval(db, selection.recording_ids, FootageAction.COPY)
        services.audit.append(
            db,
            actor=request.actor,
            action="footage.copy",
            subject=f"approval:{selection.approval_id}",
            details={
                **request.details,
                "recordings": list(selection.recording_ids),
                "files": list(files),
                "bytes": total,
            },
            at=request.now,
        )
    give_to(workspace)  # only now: re-checked and recorded
    return CopyOutcome(str(request.dest), selection.approval_id, selection.recording_ids, files, total)


def copy_footage(request: DeliveryRequest) -> CopyOutcome:
    """Copy the recordings the approval covers (or the listed subset of them) into DEST."""
    return deliver(request, COPY, _select, _copy_and_record)
