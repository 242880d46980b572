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
from zoneinfo import ZoneInfo

import click

from ingestd.commandline import config_option, json_option, load, print_json
from ingestd.ctl.client import ask, call
from ingestd.display import console, local_time, plain, table
from ingestd.exit_codes import ExitCode
from store.models import Confidentiality, RetentionClass

PURGE_TIMEOUT_S = 6 * 3600.0  # the daemon answers once every object is removed and recorded


def _custody_line(entry: dict[str, Any], zone: ZoneInfo) -> str:
    officer = "unassigned"
    if entry["officer_no"]:
        officer = f"{entry['officer_no']} {entry['officer_name'] or ''}".strip()
    note = f"  {entry['note']}" if entry["note"] else ""
    return (
        f"{local_time(entry['at'], zone)}  {entry['kind']:<9}  {entry['device_serial']:<7}  {officer}  "
        f"by {entry['actor']} ({entry['actor_role']}){note}"
    )


@click.command()
@config_option
@click.argument("device")
@click.option("--officer", "officer_no", default=None, help="The officer taking it (a clerk names them).")
@json_option
def checkout(config_path: Path | None, device: str, officer_no: str | None, as_json: bool) -> None:
    """Check camera DEVICE out: to --officer, else to its assigned officer, else unassigned."""
    config = load(config_path)
    result = call(config, "checkout", {"device": device, "officer_no": officer_no})
    custody = result["custody"]
    print_json(custody) if as_json else click.echo(_custody_line(custody, config.deadlines.zone))
    if result.get("warning"):
        click.echo(f"ingestctl: warning: {result['warning']}", err=True)


@click.command()
@config_option
@click.argument("device")
@click.option("--note", default=None, help="Why it is checked in by hand (e.g. footage read from the card).")
@json_option
def checkin(config_path: Path | None, device: str, note: str | None, as_json: bool) -> None:
    """Check camera DEVICE in by hand (card-reader imports); docking checks in by itself."""
    config = load(config_path)
    result = call(config, "checkin", {"device": device, "note": note})
    custody = result["custody"]
    print_json(custody) if as_json else click.echo(_custody_line(custody, config.deadlines.zone))


@click.command()
@config_option
@click.option("--device", default=None, help="One camera's history.")
@click.option("--officer", "officer_no", default=None, help="One officer's history (一人一档).")
@json_option
def custody(config_path: Path | None, device: str | None, officer_no: str | None, as_json: bool) -> None:
    """The handover register: every check-out and check-in, oldest first."""
    config = load(config_path)
    entries = call(config, "custody", {"device": device, "officer_no": officer_no})["custody"]
    if as_json:
        print_json(entries)
        return
    for entry in entries:
        click.echo(_custody_line(entry, config.deadlines.zone))
    if not entries:
        click.echo("custody events: none")


def _duration(seconds: float) -> str:
    """A span as an operator reads it: `2 d 3 h`, `1 h 05 min`, `4 min 10 s`, `12 s`."""
    whole = round(abs(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _flag_facts(kind: str, details: dict[str, Any], zone: ZoneInfo) -> str:
    """What this flag is about, from its details: the file and reason, the lateness, the offset..."""
    if kind == "failed-file":
        return f"{details.get('file', '?')}: {details.get('reason') or details.get('error') or '?'}"
    late_s = details.get("late_by_s", details.get("lateness_s"))
    if kind == "late" and late_s is not None:
        return f"late by {_duration(late_s)} (deadline {local_time(details.get('deadline_at'), zone)})"
    if kind == "drift" and details.get("offset_s") is not None:
        bound = f" (bound {details['bound_s']:g} s)" if details.get("bound_s") is not None else ""
        return f"clock offset {details['offset_s']:+.1f} s{bound}"
    if kind == "gap" and details.get("gap_s") is not None:
        span = ""
        if details.get("gap_from"):
            span = (
                f" ({local_time(details['gap_from'], zone)} to {local_time(details.get('gap_until'), zone)})"
            )
        return f"gap of {_duration(details['gap_s'])}{span}"
    if kind == "overdue" and details.get("due_at"):
        return (
            f"out since {local_time(details.get('checked_out_at'), zone)}, due "
            f"{local_time(details['due_at'], zone)}, "
            f"holder {details.get('holder_officer_no') or 'unassigned'}"
        )
    if kind == "interrupted":
        return f"ended {local_time(details.get('ended_at'), zone)}: {details.get('cause') or 'cause unknown'}"
    if kind == "identity-mismatch":
        return (
            f"USB serial {details.get('usb_serial')}, the camera says {details.get('device_serial')} "
            f"({details.get('source')})"
        )
    if kind == "store-full":
        return f"{details.get('error')}; {details.get('free_bytes')} bytes free"
    return ", ".join(f"{key}={value}" for key, value in sorted(details.items()))


def _flag_line(flag: dict[str, Any], zone: ZoneInfo) -> str:
    where = flag["device_serial"] or "-"
    target = f" recording {flag['recording_id']}" if flag["recording_id"] else ""
    line = f"#{flag['id']}  {flag['status']:<9}  {flag['kind']:<17}  {where}{target}  "
    line += (
        f"raised {local_time(flag['raised_at'], zone)}  {_flag_facts(flag['kind'], flag['details'], zone)}"
    )
    if flag["explanation"]:
        at = local_time(flag["explained_at"], zone) if flag["explained_at"] else "?"
        line += f"\n      {flag['explained_by']} at {at}: {flag['explanation']}"
    return line


@click.command()
@config_option
@click.option("--all", "include_closed", is_flag=True, help="Include explained and resolved flags.")
@json_option
def flags(config_path: Path | None, include_closed: bool, as_json: bool) -> None:
    """Open flags (late, overdue, gaps, drift, failed files...) with what each is about; --all for the
    whole history."""
    config = load(config_path)
    found = call(config, "flags", {"all": include_closed})["flags"]
    if as_json:
        print_json(found)
        return
    zone = config.deadlines.zone
    for flag in found:
        click.echo(_flag_line(flag, zone))
    if not found:
        click.echo("flags: none" if include_closed else "open flags: none")


def flag_id_argument(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """A flag id as `flags` prints it (`#8`) or bare (`8`)."""
    number = value.strip().removeprefix("#")
    if not number.isdecimal() or int(number) < 1:
        raise click.BadParameter(f"{value!r} is not a flag id (a number such as 8 or #8, as `flags` shows)")
    return int(number)


@click.command()
@config_option
@click.argument("flag_id", metavar="FLAG", callback=flag_id_argument)
@click.option("--text", required=True, help="The written explanation (000 art. 12; 001 art. 23).")
@json_option
def explain(config_path: Path | None, flag_id: int, text: str, as_json: bool) -> None:
    """Record the explanation of FLAG (8 or #8); it leaves the open list and stays in history."""
    config = load(config_path)
    flag = call(config, "explain", {"flag_id": flag_id, "text": text})["flag"]
    print_json(flag) if as_json else click.echo(_flag_line(flag, config.deadlines.zone))


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
    config = load(config_path)
    result = call(config, "extend", args)["extension"]
    if as_json:
        print_json(result)
        return
    zone = config.deadlines.zone
    resolved = ", ".join(f"#{flag}" for flag in result["resolved_flag_ids"])
    deadline = local_time(result["deadline_at"], zone)
    if result["previous_deadline_at"] == result["deadline_at"]:
        line = (
            f"recording {result['recording_id']}: deadline unchanged, already {deadline} (nothing extended)"
        )
    else:
        previous = local_time(result["previous_deadline_at"], zone)
        line = f"recording {result['recording_id']}: deadline {previous} -> {deadline}"
    click.echo(line + (f"; resolved flag(s) {resolved}" if resolved else ""))


def _print_purge(report: dict[str, Any], dry_run: bool, zone: ZoneInfo) -> None:
    """The purge as an operator checks it: what is noticed, what goes, what is kept and why."""
    prefix = "would " if dry_run else ""
    recordings, objects = report["deletable_recordings"], report["deletable_objects"]
    out = console()
    out.print(
        plain(
            f"{prefix}notice {len(report['notices'])} recording(s); {prefix}purge {len(recordings)} "
            f"recording(s) and remove {len(objects)} object(s) (+{len(report['pending_objects'])} pending)"
        )
    )
    kept = ", ".join(f"{reason} {count}" for reason, count in report["kept_counts"].items())
    out.print(plain(f"kept: {kept or 'none'}"))
    notices = [
        (n["recording_id"], local_time(n["expires_at"], zone), local_time(n["delete_not_before"], zone))
        for n in report["notices"]
    ]
    out.print(table(f"{prefix.capitalize()}notice", ("recording", "expires", "deleted not before"), notices))
    goes = [(recording_id, "recording") for recording_id in recordings]
    goes += [(digest, "object") for digest in objects]
    out.print(table(f"{prefix.capitalize()}purge", ("id or BLAKE3", "what"), goes))
    held = [(k["recording_id"], k["reason"], k["detail"]) for k in report["kept"]]
    held += [(k["blake3"], k["reason"], f"needed by {k['referenced_by']}") for k in report["kept_objects"]]
    out.print(table("Kept", ("id or BLAKE3", "why", "detail"), held, empty="-"))


@click.command("purge")
@config_option
@click.option("--dry-run", is_flag=True, help="Show what would be noticed and deleted; change nothing.")
@json_option
def purge_command(config_path: Path | None, dry_run: bool, as_json: bool) -> None:
    """Apply retention: give due notices, then delete noticed, expired footage that is not held, not
    long-term and whose bytes no other recording needs. The only way stored footage is ever removed."""
    config = load(config_path)
    report = call(config, "purge", {"dry_run": dry_run}, timeout=PURGE_TIMEOUT_S)["purge"]
    done = report["done"] or {}
    if as_json:
        print_json(report)
    else:
        _print_purge(report, dry_run, config.deadlines.zone)
        for digest, error in done.get("failed_objects", {}).items():
            click.echo(f"FAILED to remove {digest}: {error}", err=True)
        for subject, why in done.get("skipped", {}).items():
            click.echo(f"skipped {subject}: {why}", err=True)
    if done.get("failed_objects"):
        raise SystemExit(ExitCode.PROBLEMS)


COMMANDS = (checkout, checkin, custody, explain, flags, tag, hold, release, extend, purge_command)
