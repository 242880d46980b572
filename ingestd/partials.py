"""Expiry of interrupted copies that no dock resumed.

A keyed partial copy lets a camera's next dock resume where an unplug or a crash stopped it. One that
stays unresumed past `ingest.partial_max_age_hours` only holds disk space: it is removed, and each
removal is audited before it happens. The camera still holds the recording (nothing is deleted from a
camera before its copy is proven), so the next dock copies it again from the start.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from ingestd.services import Services
from store.audit import Actor
from store.objects import PartialCopy

log = structlog.get_logger(__name__)

EXPIRY_ACTOR = Actor.system(source="job:partial-expiry")


def expire_partial_copies(services: Services, now: datetime) -> list[PartialCopy]:
    """Remove the partial copies last written more than `partial_max_age_hours` before `now`."""
    max_age_hours = services.config.ingest.partial_max_age_hours

    def audit(partial: PartialCopy) -> None:
        with services.catalog.transaction() as db:
            services.audit.append(
                db,
                actor=EXPIRY_ACTOR,
                action="partial.expired",
                subject=f"partial:{partial.key}",
                details={
                    "durable_bytes": partial.durable,
                    "written_at": partial.written_at.isoformat(),
                    "max_age_hours": max_age_hours,
                },
                at=now,
            )

    expired = services.store.expire_partials(now - timedelta(hours=max_age_hours), audit)
    for partial in expired:
        log.info(
            "partial_expired",
            resume_key=partial.key,
            durable_bytes=partial.durable,
            written_at=partial.written_at.isoformat(),
        )
    return expired
