"""Control command `verify.record`: the daemon keeps the outcome of an `ingestctl verify` run.

`ingestctl verify` verifies read-only in its own process and never writes the catalog; the daemon, the
catalog's one writer, appends the outcome (`verify.run`) for `status` and the metrics. The event names the
OS user who ran the verify (SO_PEERCRED), since the figures are theirs. As a mutating command it is also
audited as `ctl.verify.record`, and the dispatcher then signs the chain head. Roles: admin and auditor.
The figures are the caller's word, so only the roles whose job verifying is may report one (verifying
needs only the published public key and read access, so an auditor can run it); `status` shows who did.
"""

from __future__ import annotations

from typing import Any

from ingestd.control.queries import Args, last_verify
from ingestd.control.registry import Request, command
from ingestd.services import Services
from ingestd.verify import VerifyOutcome, record_outcome
from store.audit import Role

VERIFIERS = frozenset({Role.ADMIN, Role.AUDITOR})
COUNT_MAX = 2**62


@command("verify.record", roles=VERIFIERS, mutates=True)
def record(services: Services, request: Request) -> dict[str, Any]:
    args = Args(
        "verify.record", request.args, {"clean", "events_checked", "objects_checked", "problems", "objects"}
    )
    outcome = VerifyOutcome(
        clean=args.flag("clean"),
        events_checked=args.integer("events_checked", 0, 0, COUNT_MAX),
        objects_checked=args.integer("objects_checked", 0, 0, COUNT_MAX),
        problems=args.integer("problems", 0, 0, COUNT_MAX),
        objects=args.flag("objects"),
    )
    if outcome.clean == bool(outcome.problems):
        args.fail(
            f"clean must be true exactly when problems is 0, not {outcome.clean} with {outcome.problems}"
        )
    with services.catalog.transaction() as db:
        record_outcome(db, services.audit, request.actor, outcome, request.now)
        return {"last_verify": last_verify(db)}
