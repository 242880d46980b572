"""`ingestctl` commands for custody, flags, classification, holds, deadline extensions and the purge.

Every command asks the daemon over the control socket, which identifies the caller by the kernel's peer
credentials, checks the role its OS groups give (see `ingestd.control.handlers_records`) and audits the
call. With `--json` each prints the daemon's answer as one JSON document on stdout.

Exit codes: 0 done; 2 a wrong flag, value or id (one line naming it); 3 a purge could not remove an
object; 13 permission denied (audited); 69 ingestd is not running; 75 no answer in time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ingestd.commandline import config_option, json_option, print_json
from ingestd.ctl.client import ask
from ingestd.exit_codes import ExitCode
from store.models import Confidentiality, RetentionClass

PURGE_TIMEOUT_S = 6 * 3600.0  # the daemon answers once every object is removed and recorded


def _custody_line(entry: dict[str, Any]) -> str:
    officer = "unassigned"
    if entry["officer_no"]:
        officer = f"{entry['officer_no']} {entry['officer_name'] or ''}".strip()
    note = f"  {entry['note']}" if entry["note"] else ""
    return (
        f"{entry['at']}  {entry['kind']:<9}  {entry['device_serial']:<7}  {officer}  "
        f"by {entry['actor']} ({entry['actor_role']}){note}"
    )


@click.command()
@config_option
@click.argument("device")
@click.option("--officer", "officer_no", default=None, help="The officer taking it (a clerk names them).")
@json_option
def checkout(config_path: Path | None, device: str, officer_no: str | None, as_json: bool) -> None:
    """Check camera DEVICE out: to --officer, else to its assigned officer, else unassigned."""
    result = ask(config_path, "checkout", {"device": device, "officer_no": officer_no})
    print_json(result["custody"]) if as_json else click.echo(_custody_line(result["custody"]))


@click.command()
@config_option
@click.argument("device")
@click.option("--note", default=None, help="Why it is checked in by hand (e.g. footage read from the card).")
@json_option
def checkin(config_path: Path | None, device: str, note: str | None, as_json: bool) -> None:
    """Check camera DEVICE in by hand (card-reader imports); docking checks in by itself."""
    result = ask(config_path, "checkin", {"device": device, "note": note})
    print_json(result["custody"]) if as_json else click.echo(_custody_line(result["custody"]))


@click.command()
@config_option
@click.option("--device", default=None, help="One camera's history.")
@click.option("--officer", "officer_no", default=None, help="One officer's history (一人一档).")
@json_option
def custody(config_path: Path | None, device: str | None, officer_no: str | None, as_json: bool) -> None:
    """The handover register: every check-out and check-in, oldest first."""
    entries = ask(config_path, "custody", {"device": device, "officer_no": officer_no})["custody"]
    if as_json:
        print_json(entries)
        return
    for entry in entries:
        click.echo(_custody_line(entry))
    if not entries:
        click.echo("no custody events")


def _flag_line(flag: dict[str, Any]) -> str:
    where = flag["device_serial"] or "-"
    target = f" recording {flag['recording_id']}" if flag["recording_id"] else ""
    line = f"#{flag['id']}  {flag['status']:<9}  {flag['kind']:<17}  {where}{target}  "
    line += f"raised {flag['raised_at']}"
    if flag["explanation"]:
        line += f"\n      {flag['explained_by']} at {flag['explained_at'] or '?'}: {flag['explanation']}"
    return line


@click.command()
@config_option
@click.option("--all", "include_closed", is_flag=True, help="Include explained and resolved flags.")
@json_option
def flags(config_path: Path | None, include_closed: bool, as_json: bool) -> None:
    """Open flags (late, overdue, gaps, drift, failed files...); --all for the whole history."""
    found = ask(config_path, "flags", {"all": include_closed})["flags"]
    if as_json:
        print_json(found)
        return
    for flag in found:
        click.echo(_flag_line(flag))
    if not found:
        click.echo("no open flags" if not include_closed else "no flags")


@click.command()
@config_option
@click.argument("flag_id", metavar="FLAG", type=click.IntRange(min=1))
@click.option("--text", required=True, help="The written explanation (000 art. 12; 001 art. 23).")
@json_option
def explain(config_path: Path | None, flag_id: int, text: str, as_json: bool) -> None:
    """Record the explanation of FLAG; it leaves the open list and stays in history."""
    flag = ask(config_path, "explain", {"flag_id": flag_id, "text": text})["flag"]
    print_json(flag) if as_json else click.echo(_flag_line(flag))


def _changes(results: list[dict[str, Any]], as_json: bool, verb: str) -> None:
    if as_json:
        print_json(results)
        return
    for result in results:
        click.echo(f"recording {result['recording_id']}: {verb if result['changes'] else 'unchanged'}")


def _selection(recording_ids: tuple[int, ...], in_case: str | None) -> dict[str, Any]:
    return {"recording_ids": list(recording_ids) or None, "in_case": in_case}


recordings_argument = click.argument(
    "recording_ids", metavar="[RECORDING]...", nargs=-1, type=click.IntRange(min=1)
)
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
    as_json: bool,
    add_tags: tuple[str, ...],
    remove_tags: tuple[str, ...],
    **fields: str | None,
) -> None:
    """Classify recordings and set retention tags (audited). Tags such as evidence, complaint,
    litigation, violence, mass-incident or major-case keep footage long-term."""
    args = {
        **_selection(recording_ids, in_case),
        **fields,
        "add_tags": list(add_tags) or None,
        "remove_tags": list(remove_tags) or None,
    }
    _changes(ask(config_path, "tag", args)["changes"], as_json, "classified")


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
    args = {**_selection(recording_ids, in_case), "reason": reason}
    _changes(ask(config_path, "hold", args)["changes"], as_json, "held")


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
    args = {**_selection(recording_ids, in_case), "reason": reason}
    _changes(ask(config_path, "release", args)["changes"], as_json, "released")


@click.command()
@config_option
@click.argument("recording_id", metavar="RECORDING", type=click.IntRange(min=1))
@click.option("--days", "working_days", type=int, required=True, help="Working days (1 to 3, 003 art. 11).")
@click.option("--reason", required=True, help="Why the footage could not be stored within the window.")
@json_option
def extend(
    config_path: Path | None, recording_id: int, working_days: int, reason: str, as_json: bool
) -> None:
    """Extend RECORDING's upload deadline to N working days after it ended (holiday calendar applies)."""
    args = {"recording_id": recording_id, "working_days": working_days, "reason": reason}
    result = ask(config_path, "extend", args)["extension"]
    if as_json:
        print_json(result)
        return
    resolved = ", ".join(map(str, result["resolved_flag_ids"]))
    click.echo(
        f"recording {result['recording_id']}: deadline {result['previous_deadline_at']} -> "
        f"{result['deadline_at']}" + (f"; resolved flag(s) {resolved}" if resolved else "")
    )


@click.command("purge")
@config_option
@click.option("--dry-run", is_flag=True, help="Show what would be noticed and deleted; change nothing.")
@json_option
def purge_command(config_path: Path | None, dry_run: bool, as_json: bool) -> None:
    """Apply retention: give due notices, then delete noticed, expired footage that is not held, not
    long-term and whose bytes no other recording needs. The only way stored footage is ever removed."""
    report = ask(config_path, "purge", {"dry_run": dry_run}, timeout=PURGE_TIMEOUT_S)["purge"]
    done = report["done"] or {}
    if as_json:
        print_json(report)
    else:
        prefix = "would " if dry_run else ""
        recordings, objects = len(report["deletable_recordings"]), len(report["deletable_objects"])
        click.echo(
            f"{prefix}notice {len(report['notices'])} recording(s); {prefix}purge {recordings} "
            f"recording(s) and remove {objects} object(s) (+{len(report['pending_objects'])} pending); "
            f"kept: {report['kept_counts']}"
        )
        for digest, error in done.get("failed_objects", {}).items():
            click.echo(f"FAILED to remove {digest}: {error}", err=True)
        for subject, why in done.get("skipped", {}).items():
            click.echo(f"skipped {subject}: {why}", err=True)
    if done.get("failed_objects"):
        raise SystemExit(ExitCode.PROBLEMS)


COMMANDS = (checkout, checkin, custody, explain, flags, tag, hold, release, extend, purge_command)
