"""Read commands of the control socket: status, cameras, officers, footage (metadata) and audit.

Roles: status, cameras, officers and the footage listing are for every role (viewer and up). Listing
footage is metadata, not viewing footage (viewing or copying needs an approval, 000 art. 16), but each
search is still audited (`footage=True`), and case details of confidential recordings are redacted
unless the caller is admin, approver or auditor. The audit trail is for admin and auditor only.
"""

from __future__ import annotations

from typing import Any

from ingestd import replication
from ingestd.control import queries
from ingestd.control.registry import EVERYONE, Request, command
from ingestd.services import Services
from store.audit import Role

AUDIT_READERS = frozenset({Role.ADMIN, Role.AUDITOR})


def _free_bytes(services: Services) -> int | None:
    try:
        return services.store.free_bytes()
    except OSError:
        return None


@command("status", roles=EVERYONE)
def status(services: Services, request: Request) -> dict[str, Any]:
    queries.Args("status", request.args, set())
    with services.catalog.transaction() as db:
        shown = queries.status(
            db,
            free_bytes=_free_bytes(services),
            store_root=str(services.config.store.root),
            now=request.now,
            dock_label=services.config.dock_label,
        )
    return {**shown, "detection": services.detection}


@command("cameras", roles=EVERYONE)
def cameras(services: Services, request: Request) -> dict[str, Any]:
    with services.catalog.transaction() as db:
        return queries.cameras(db, request.args)


@command("officers", roles=EVERYONE)
def officers(services: Services, request: Request) -> dict[str, Any]:
    with services.catalog.transaction() as db:
        return queries.officers(db, request.args)


@command("footage", roles=EVERYONE, footage=True)
def footage(services: Services, request: Request) -> dict[str, Any]:
    with services.catalog.transaction() as db:
        return queries.footage(db, request.args, zone=services.config.deadlines.zone, role=request.actor.role)


@command("replication", roles=EVERYONE)
def replication_status(services: Services, request: Request) -> dict[str, Any]:
    queries.Args("replication", request.args, set())
    vault = services.config.vault
    with services.catalog.transaction() as db:
        return replication.view(
            db, enabled=vault.enabled, bucket=vault.bucket, endpoint=vault.endpoint, now=request.now
        )


@command("audit", roles=AUDIT_READERS)
def audit(services: Services, request: Request) -> dict[str, Any]:
    with services.catalog.transaction() as db:
        return queries.audit_events(db, request.args, zone=services.config.deadlines.zone)
