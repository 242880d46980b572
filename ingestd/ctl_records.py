"""`ingestctl` commands for custody, flags, classification, holds, deadline extensions and the purge.

Every command opens the services without migrating, acts as the OS user who ran it, closes what it
opened, and with `--json` prints one JSON document on stdout. A bad id or option is one line on
stderr and exit code 2 (see `ingestd.cli.run_cli`); a purge that could not remove an object exits 3.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ingestd import operations, purge
from ingestd.cli import config_option, load
from ingestd.services import Services
from store.audit import Actor, Role
from store.models import Confidentiality, RetentionClass
from store.types import utcnow

EXIT_PROBLEMS = 3

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def current_actor() -> Actor:
    """The OS user running the command. Roles from OS groups arrive with the control socket (issue 6);
    until then root acts as admin and everyone else as clerk."""
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid with no passwd entry (containers): still attributable by number
        user = f"uid{uid}"
    role = Role.ADMIN if uid == 0 else Role.CLERK
    return Actor(user=user, uid=uid, role=role, source=f"ctl:uid={uid}")


@contextlib.contextmanager
def opened(config_path: Path | None) -> Iterator[Services]:
    services = Services.open(load(config_path), migrate=False)
    try:
        yield services
    finally:
        services.close()


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def emit(value: Any) -> None:
    click.echo(json.dumps(_plain(value), ensure_ascii=False, indent=2))


def _custody_line(entry: operations.CustodyEntry) -> str:
    officer = f"{entry.officer_no} {entry.officer_name or ''}".strip() if entry.officer_no else "unassigned"
    return (
        f"{entry.at.isoformat()}  {entry.kind:<9}  {entry.device_serial:<7}  {officer}  "
        f"by {entry.actor} ({entry.actor_role}){'  ' + entry.note if entry.note else ''}"
    )


@click.command()
@config_option
@click.argument("device")
@click.option("--officer", "officer_no", default=None, help="The officer taking it (a clerk names them).")
@json_option
def checkout(config_path: Path | None, device: str, officer_no: str | None, as_json: bool) -> None:
    """Check camera DEVICE out: to --officer, else to its assigned officer, else unassigned."""
    with opened(config_path) as services, services.catalog.transaction() as session:
        entry = operations.checkout(
            session,
            services.audit,
            actor=current_actor(),
            now=utcnow(),
            device_serial=device,
            officer_no=officer_no,
        )
    emit(entry) if as_json else click.echo(_custody_line(entry))


@click.command()
@config_option
@click.argument("device")
@click.option("--note", default=None, help="Why it is checked in by hand (e.g. footage read from the card).")
@json_option
def checkin(config_path: Path | None, device: str, note: str | None, as_json: bool) -> None:
    """Check camera DEVICE in by hand (card-reader imports); docking checks in by itself."""
    with opened(config_path) as services, services.catalog.transaction() as session:
        entry = operations.checkin(
            session, services.audit, actor=current_actor(), now=utcnow(), device_serial=device, note=note
        )
    emit(entry) if as_json else click.echo(_custody_line(entry))


@click.command()
@config_option
@click.option("--device", default=None, help="One camera's history.")
@click.option("--officer", "officer_no", default=None, help="One officer's history (一人一档).")
@json_option
def custody(config_path: Path | None, device: str | None, officer_no: str | None, as_json: bool) -> None:
    """The handover register: every check-out and check-in, oldest first."""
    with opened(config_path) as services, services.catalog.transaction() as session:
        entries = operations.custody_history(session, device_serial=device, officer_no=officer_no)
    if as_json:
        emit(entries)
        return
    for entry in entries:
        click.echo(_custody_line(entry))
    if not entries:
        click.echo("no custody events")


def _flag_line(flag: operations.FlagView) -> str:
    where = flag.device_serial or "-"
    target = f" recording {flag.recording_id}" if flag.recording_id else ""
    raised = flag.raised_at.isoformat()
    line = f"#{flag.id}  {flag.status:<9}  {flag.kind:<17}  {where}{target}  raised {raised}"
    if flag.explanation:
        when = flag.explained_at.isoformat() if flag.explained_at else "?"
        line += f"\n      {flag.explained_by} at {when}: {flag.explanation}"
    return line


@click.command()
@config_option
@click.option("--all", "include_closed", is_flag=True, help="Include explained and resolved flags.")
@json_option
def flags(config_path: Path | None, include_closed: bool, as_json: bool) -> None:
    """Open flags (late, overdue, gaps, drift, failed files...); --all for the whole history."""
    with opened(config_path) as services, services.catalog.transaction() as session:
        found = operations.list_flags(session, include_closed=include_closed)
    if as_json:
        click.echo(json.dumps([flag.as_json() for flag in found], ensure_ascii=False, indent=2))
        return
    for flag in found:
        click.echo(_flag_line(flag))
    if not found:
        click.echo("no open flags" if not include_closed else "no flags")


@click.command()
@config_option
@click.argument("flag_id", metavar="FLAG", type=int)
@click.option("--text", required=True, help="The written explanation (000 art. 12; 001 art. 23).")
@json_option
def explain(config_path: Path | None, flag_id: int, text: str, as_json: bool) -> None:
    """Record the explanation of FLAG; it leaves the open list and stays in history."""
    with opened(config_path) as services, services.catalog.transaction() as session:
        flag = operations.explain(
            session, services.audit, actor=current_actor(), now=utcnow(), flag_id=flag_id, text=text
        )
    if as_json:
        click.echo(json.dumps(flag.as_json(), ensure_ascii=False, indent=2))
    else:
        click.echo(_flag_line(flag))


def _changes(results: list[operations.Change], as_json: bool, verb: str) -> None:
    if as_json:
        emit(results)
        return
    for result in results:
        click.echo(f"recording {result.recording_id}: {verb if result.changes else 'unchanged'}")


recordings_argument = click.argument("recording_ids", metavar="[RECORDING]...", nargs=-1, type=int)
in_case_option = click.option("--in-case", default=None, help="Every recording of this case id instead.")


@click.command()
@config_option
@recordings_argument
@in_case_option
@click.option("--case-id", default=None, help="Case number (at most 64 characters).")
@click.option("--case-party", default=None, help="Party to the case (当事人).")
@click.option("--case-name", default=None, help="Case name (案由).")
@click.option("--event", default=None, help="What happened.")
@click.option("--place", default=None, help="Where it happened.")
@click.option(
    "--confidentiality",
    type=click.Choice([c.value for c in Confidentiality]),
    default=None,
    help="Secrecy and privacy level.",
)
@click.option("--tag", "add_tags", multiple=True, help="Add a retention tag (repeatable), e.g. evidence.")
@click.option("--untag", "remove_tags", multiple=True, help="Remove a retention tag (repeatable).")
@click.option(
    "--class",
    "retention_class",
    type=click.Choice([c.value for c in RetentionClass]),
    default=None,
    help="Set the retention class; cannot go below long-term while a long-term tag is present.",
)
@json_option
def tag(
    *,
    config_path: Path | None,
    recording_ids: tuple[int, ...],
    in_case: str | None,
    case_id: str | None,
    case_party: str | None,
    case_name: str | None,
    event: str | None,
    place: str | None,
    confidentiality: str | None,
    add_tags: tuple[str, ...],
    remove_tags: tuple[str, ...],
    retention_class: str | None,
    as_json: bool,
) -> None:
    """Classify recordings and set retention tags (audited). Tags such as evidence, complaint,
    litigation, violence, mass-incident or major-case keep footage long-term."""
    with opened(config_path) as services, services.catalog.transaction() as session:
        results = operations.tag(
            session,
            services.audit,
            actor=current_actor(),
            now=utcnow(),
            retention=services.config.retention,
            recording_ids=recording_ids,
            in_case=in_case,
            case_id=case_id,
            case_party=case_party,
            case_name=case_name,
            event=event,
            place=place,
            confidentiality=Confidentiality(confidentiality) if confidentiality else None,
            add_tags=add_tags,
            remove_tags=remove_tags,
            retention_class=RetentionClass(retention_class) if retention_class else None,
        )
    _changes(results, as_json, "classified")


@click.command()
@config_option
@recordings_argument
@in_case_option
@click.option("--reason", required=True, help="Why the footage must not expire (case, complaint, order).")
@json_option
def hold(
    config_path: Path | None, recording_ids: tuple[int, ...], in_case: str | None, reason: str, as_json: bool
) -> None:
    """Place a legal hold: the recordings are never purged while it lasts."""
    with opened(config_path) as services, services.catalog.transaction() as session:
        results = operations.hold(
            session,
            services.audit,
            actor=current_actor(),
            now=utcnow(),
            reason=reason,
            recording_ids=recording_ids,
            in_case=in_case,
        )
    _changes(results, as_json, "held")


@click.command()
@config_option
@recordings_argument
@in_case_option
@click.option("--reason", required=True, help="Why the hold ends.")
@json_option
def release(
    config_path: Path | None, recording_ids: tuple[int, ...], in_case: str | None, reason: str, as_json: bool
) -> None:
    """Lift a legal hold; a later purge gives a fresh notice first."""
    with opened(config_path) as services, services.catalog.transaction() as session:
        results = operations.release(
            session,
            services.audit,
            actor=current_actor(),
            now=utcnow(),
            reason=reason,
            recording_ids=recording_ids,
            in_case=in_case,
        )
    _changes(results, as_json, "released")


@click.command()
@config_option
@click.argument("recording_id", metavar="RECORDING", type=int)
@click.option("--days", "working_days", type=int, required=True, help="Working days (1 to 3, 003 art. 11).")
@click.option("--reason", required=True, help="Why the footage could not be stored within the window.")
@json_option
def extend(
    config_path: Path | None, recording_id: int, working_days: int, reason: str, as_json: bool
) -> None:
    """Extend RECORDING's upload deadline to N working days after it ended (holiday calendar applies)."""
    with opened(config_path) as services, services.catalog.transaction() as session:
        result = operations.extend(
            session,
            services.audit,
            actor=current_actor(),
            now=utcnow(),
            deadlines=services.config.deadlines,
            recording_id=recording_id,
            working_days=working_days,
            reason=reason,
        )
    if as_json:
        emit(result)
    else:
        resolved = ", ".join(map(str, result.resolved_flag_ids))
        click.echo(
            f"recording {result.recording_id}: deadline {result.previous_deadline_at.isoformat()} -> "
            f"{result.deadline_at.isoformat()}" + (f"; resolved flag(s) {resolved}" if resolved else "")
        )


@click.command("purge")
@config_option
@click.option("--dry-run", is_flag=True, help="Show what would be noticed and deleted; change nothing.")
@json_option
def purge_command(config_path: Path | None, dry_run: bool, as_json: bool) -> None:
    """Apply retention: give due notices, then delete noticed, expired footage that is not held, not
    long-term and whose bytes no other recording needs. The only way stored footage is ever removed."""
    with opened(config_path) as services:
        report = purge.purge(
            services.catalog,
            services.store,
            services.audit,
            actor=current_actor(),
            now=utcnow(),
            rules=services.config.retention.rules(),
            dry_run=dry_run,
        )
    if as_json:
        click.echo(json.dumps(report.as_json(), ensure_ascii=False, indent=2))
    else:
        data = report.as_json()
        prefix = "would " if dry_run else ""
        click.echo(
            f"{prefix}notice {len(data['notices'])} recording(s); {prefix}purge "
            f"{len(data['deletable_recordings'])} recording(s) and remove {len(data['deletable_objects'])} "
            f"object(s) (+{len(data['pending_objects'])} pending); kept: {data['kept_counts']}"
        )
        for digest, error in report.failed_objects.items():
            click.echo(f"FAILED to remove {digest}: {error}", err=True)
        for subject, why in report.skipped.items():
            click.echo(f"skipped {subject}: {why}", err=True)
    if not report.ok:
        raise SystemExit(EXIT_PROBLEMS)


COMMANDS = (checkout, checkin, custody, explain, flags, tag, hold, release, extend, purge_command)
