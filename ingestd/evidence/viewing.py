"""Viewing one approved recording (000 art. 16; 002 art. 16; 004 art. 20(二)).

Guarantees: the stored object is opened (read-only) only when the approval lets the caller view that
recording now, and handed out only after its `footage.view` audit event is committed; a refusal is
audited in a transaction of its own. The caller gets an open file, never a path: they need no access
to the store. An evicted recording is read back from the vault and verified whole before it is handed out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, BinaryIO

from ingestd.evidence.approvals import FootageAction
from ingestd.evidence.delivery import approved_recordings, payload_items, refusal_audited
from ingestd.services import Services
from ingestd.stream_back import open_spooled
from store.audit import Actor


@dataclass(frozen=True)
class Viewing:
    """An open stored object and what the catalog says it is, so the viewer can check what they got."""

    approval_id: int
    recording_id: int
    name: str  # the file name an export or copy would give it
    size: int
    sha256: str
    blake3: str
    file: BinaryIO

    def as_dict(self) -> dict[str, Any]:
        """Everything but the file: the answer's JSON part."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "file"}


def open_for_viewing(
    services: Services,
    actor: Actor,
    approval_id: int,
    recording_id: int,
    *,
    now: datetime,
    later: Callable[[], datetime] | None = None,
) -> Viewing:
    """Open recording `recording_id` for `actor` under approval `approval_id`; the caller closes it.
    `later` tells the time after the bytes are ready (a vault read can take long), else `now` holds."""
    details: dict[str, Any] = {"approval": approval_id, "recording": recording_id}
    source: BinaryIO | None = None
    try:
        with (
            refusal_audited(services, actor, FootageAction.VIEW, details, now),
            services.catalog.transaction() as db,
        ):
            _, rows = approved_recordings(
                db, approval_id, [recording_id], now, FootageAction.VIEW, user=actor.user
            )
            [item] = payload_items(db, rows)
        # Outside the transaction: an evicted recording is first read whole from the vault and verified.
        with services.in_use.reading([item.blake3]):
            source = open_spooled(services, item.blake3, services.config.daemon.state_dir)
        with (
            refusal_audited(services, actor, FootageAction.VIEW, details, now),
            services.catalog.transaction() as db,
        ):
            # Checked again, at the time it is now: the approval may have been revoked or have expired
            # while the bytes came back from the vault.
            checked_at = later() if later is not None else now
            approved_recordings(
                db, approval_id, [recording_id], checked_at, FootageAction.VIEW, user=actor.user
            )
            services.audit.append(
                db,
                actor=actor,
                action="footage.view",
                subject=f"recording:{recording_id}",
                details={**details, "file": item.name, "size": item.size, "sha256": item.sha256},
                at=now,
            )
        return Viewing(approval_id, recording_id, item.name, item.size, item.sha256, item.blake3, source)
    except BaseException:
        if source is not None:
            source.close()
        raise
