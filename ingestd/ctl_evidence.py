"""`ingestctl` commands for approvals, evidence exports, spot checks and reports.

All but `verify-export` ask the daemon over its control socket, which identifies the caller by the
kernel's peer credentials; `verify-export` reads only the bag, so a court can run it anywhere.

Exit codes: 0 done; 2 wrong flag, argument or id; 3 (verify-export) the bag has problems, each listed;
13 permission denied (the caller's groups give no role allowed for the command); 14 no valid approval
(missing, expired, revoked, out of scope, confidential); 15 the export could not be written (DEST
exists, not writable); 16 the store's bytes do not match the catalog (nothing exported: investigate);
other codes come from the daemon or the socket (e.g. daemon not running).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from ingestd.cli import config_option, load
from ingestd.evidence.verify_bag import verify_bag
from store.signing import SigningKeyError, load_public_key

EXIT_PROBLEMS = 3
EXPORT_TIMEOUT_S = 6 * 3600.0  # the daemon answers only when the bag is written, verified and recorded

F = TypeVar("F", bound=Callable[..., Any])
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")


def _call(config_path: Path | None, command: str, args: dict[str, Any], *, timeout: float = 30.0) -> Any:
    from ingestd.control import client  # noqa: PLC0415 - only the socket commands need it

    config = load(config_path)
    return client.call(config.control.socket, command, args, timeout=timeout)


def _emit(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    # Piped output (a file, a mail) gets whole columns rather than the 80 columns of a missing terminal.
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def _period_options(func: F) -> F:
    func = click.option("--month", default=None, help="A calendar month, YYYY-MM (local time).")(func)
    func = click.option("--from", "start", default=None, help="First day, YYYY-MM-DD (local time).")(func)
    return click.option("--to", "end", default=None, help="Last day, YYYY-MM-DD, included.")(func)


def _period_args(month: str | None, start: str | None, end: str | None) -> dict[str, Any]:
    if month is None and (start is None or end is None):
        raise click.UsageError("give --month YYYY-MM, or both --from and --to YYYY-MM-DD")
    return {"month": month, "from": start, "to": end}


# --- approvals -----------------------------------------------------------------------------------------


def _print_approval(approval: dict[str, Any]) -> None:
    scope = []
    if approval["scope_recording_ids"]:
        scope.append("recordings " + ", ".join(map(str, approval["scope_recording_ids"])))
    if approval["scope_case_id"]:
        scope.append(f"case {approval['scope_case_id']}")
    click.echo(
        f"approval {approval['id']} ({approval['state']}): by {approval['approver']}, "
        f"purpose {approval['purpose']!r}; scope {' and '.join(scope)}; "
        f"{'confidential allowed' if approval['allows_confidential'] else 'no confidential'}; "
        f"expires {approval['expires_at']}"
        + (f"; revoked {approval['revoked_at']}" if approval["revoked_at"] else "")
    )


@click.command()
@config_option
@click.option("--purpose", required=True, help="Why the footage is needed (kept with the approval).")
@click.option(
    "--recording",
    "recordings",
    type=click.IntRange(min=1),
    multiple=True,
    help="A recording id in scope (repeatable).",
)
@click.option("--case", "case_id", default=None, help="A case id: its recordings are all in scope.")
@click.option("--expires-in", default=None, help="Validity from now: 90m, 12h, 30d (at most 90 days).")
@click.option("--expires-at", default=None, help="Expiry, ISO 8601 with a zone: 2026-04-01T18:00+08:00.")
@click.option("--allow-confidential", is_flag=True, help="Also cover confidential recordings in scope.")
@click.option("--requested-by", default=None, help="Who asked for the footage (recorded as the extractor).")
@json_option
def approve(
    *,
    config_path: Path | None,
    purpose: str,
    recordings: tuple[int, ...],
    case_id: str | None,
    expires_in: str | None,
    expires_at: str | None,
    allow_confidential: bool,
    requested_by: str | None,
    as_json: bool,
) -> None:
    """Approve viewing, copying or exporting footage (approver role; 000 art. 16, 004 art. 20)."""
    if not recordings and not case_id:
        raise click.UsageError("give a scope: --recording ID (repeatable) and/or --case CASE")
    if (expires_in is None) == (expires_at is None):
        raise click.UsageError("give exactly one of --expires-in or --expires-at")
    result = _call(
        config_path,
        "approve",
        {
            "purpose": purpose,
            "recording_ids": list(recordings),
            "case_id": case_id,
            "expires_in": expires_in,
            "expires_at": expires_at,
            "allows_confidential": allow_confidential,
            "requested_by": requested_by,
        },
    )
    _emit(result) if as_json else _print_approval(result)


@click.command()
@config_option
@click.argument("approval_id", type=click.IntRange(min=1))
@click.option("--reason", required=True, help="Why the approval is withdrawn.")
@json_option
def revoke(config_path: Path | None, approval_id: int, reason: str, as_json: bool) -> None:
    """Revoke an approval: no export or viewing under it from now on."""
    result = _call(config_path, "revoke", {"approval_id": approval_id, "reason": reason})
    _emit(result) if as_json else _print_approval(result)


@click.command()
@config_option
@click.argument("approval_id", type=click.IntRange(min=1), required=False)
@json_option
def approvals(config_path: Path | None, approval_id: int | None, as_json: bool) -> None:
    """List approvals (newest first), or show one."""
    result = _call(config_path, "approvals", {"approval_id": approval_id})
    if as_json:
        _emit(result)
        return
    for approval in result["approvals"]:
        _print_approval(approval)


# --- export and verification ---------------------------------------------------------------------------


@click.command()
@config_option
@click.option("--approval", "approval_id", type=click.IntRange(min=1), required=True, help="Approval id.")
@click.option(
    "--recording",
    "recordings",
    type=click.IntRange(min=1),
    multiple=True,
    help="Export only these recordings (each must be in the approval's scope).",
)
@click.argument("dest", type=click.Path(path_type=Path))
@json_option
def export(
    *,
    config_path: Path | None,
    approval_id: int,
    recordings: tuple[int, ...],
    dest: Path,
    as_json: bool,
) -> None:
    """Write the approved recordings to DEST as a signed BagIt bag (DEST must not exist)."""
    absolute = dest.expanduser().absolute()  # the daemon's working directory is not ours
    result = _call(
        config_path,
        "export",
        {
            "approval_id": approval_id,
            "dest": str(absolute),
            "recording_ids": list(recordings),
        },
        timeout=EXPORT_TIMEOUT_S,
    )
    if as_json:
        _emit(result)
        return
    click.echo(
        f"export {result['export_id']}: {len(result['recording_ids'])} recording(s), "
        f"{result['payload_bytes']} bytes to {result['destination']}\n"
        f"signed by {result['key_id']}; tag manifest SHA-256 {result['tag_manifest_sha256']}"
    )


@click.command("verify-export")
@click.argument("path", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--public-key",
    "public_key_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="The station's published public key (PEM): the bag must be signed with it.",
)
@json_option
def verify_export(path: Path, public_key_file: Path | None, as_json: bool) -> None:
    """Check an exported bag on its own, without the station: exit 0 if it verifies, 3 if not."""
    pinned = None
    if public_key_file is not None:
        try:
            pinned = load_public_key(public_key_file)
        except SigningKeyError as error:
            raise click.BadParameter(str(error), param_hint="--public-key") from None
    report = verify_bag(path, public_key=pinned)
    if as_json:
        _emit(report.as_dict())
    else:
        console = Console()
        for problem in report.problems:
            console.print(
                f"[red]PROBLEM[/red] {problem.kind} {problem.subject}: {problem.detail}",
                markup=True,
                highlight=False,
            )
        verdict = "[green]valid[/green]" if report.clean else f"[red]{len(report.problems)} problem(s)[/red]"
        pinned_note = " (pinned)" if report.pinned_key_id and report.clean else ""
        console.print(
            f"{path}: {report.payload_files} file(s), {report.payload_bytes} bytes; "
            f"key {report.key_id}{pinned_note}; {verdict}",
            highlight=False,
        )
    if not report.clean:
        raise SystemExit(EXIT_PROBLEMS)


# --- spot checks ---------------------------------------------------------------------------------------


def _print_inspection(inspection: dict[str, Any]) -> None:
    summary = inspection["summary"]
    click.echo(
        f"inspection {inspection['id']}: unit {inspection['unit_no'] or 'all'}, "
        f"{inspection['period']['start']} .. {inspection['period']['end']}, seed {inspection['seed']}, "
        f"{inspection['sample_size']} of {inspection['population']}; "
        f"pass {summary['pass']}, fail {summary['fail']}, pending {summary['pending']}"
        + ("" if inspection.get("reproduces", True) else "; WARNING: the sample no longer draws the same")
    )
    _table(
        "sample",
        ["#", "recording", "verdict", "by", "at", "notes"],
        [
            (
                i["position"],
                i["recording_id"],
                i["verdict"] or "pending",
                i["reviewed_by"],
                i["reviewed_at"],
                i["notes"],
            )
            for i in inspection["items"]
        ],
    )


@click.group()
def spotcheck() -> None:
    """Spot checks of footage and the inspection ledger (000 art. 18; 002 art. 22)."""


@spotcheck.command("sample")
@config_option
@click.option("--unit", "unit_no", default=None, help="Unit number (default: every unit).")
@_period_options
@click.option(
    "--size", type=click.IntRange(1, 1000), default=10, show_default=True, help="Recordings to draw."
)
@click.option("--seed", default=None, help="Seed to draw with (default: a random one, stored and printed).")
@click.option("--note", default=None, help="A note for the ledger.")
@json_option
def spotcheck_sample(
    *,
    config_path: Path | None,
    unit_no: str | None,
    month: str | None,
    start: str | None,
    end: str | None,
    size: int,
    seed: str | None,
    note: str | None,
    as_json: bool,
) -> None:
    """Draw a reproducible sample and open an inspection."""
    result = _call(
        config_path,
        "spotcheck.sample",
        {
            **_period_args(month, start, end),
            "unit_no": unit_no,
            "size": size,
            "seed": seed,
            "note": note,
        },
    )
    _emit(result) if as_json else _print_inspection(result)


@spotcheck.command("verdict")
@config_option
@click.argument("inspection_id", type=click.IntRange(min=1))
@click.argument("recording_id", type=click.IntRange(min=1))
@click.option("--pass", "verdict", flag_value="pass", help="The recording meets the rules.")
@click.option("--fail", "verdict", flag_value="fail", help="It does not (say why in --notes).")
@click.option("--notes", default=None, help="What was found.")
@click.option("--amend", is_flag=True, help="Replace a recorded verdict (the old one stays audited).")
@json_option
def spotcheck_verdict(
    *,
    config_path: Path | None,
    inspection_id: int,
    recording_id: int,
    verdict: str | None,
    notes: str | None,
    amend: bool,
    as_json: bool,
) -> None:
    """Record the reviewer's verdict on one sampled recording."""
    if verdict is None:
        raise click.UsageError("give --pass or --fail")
    result = _call(
        config_path,
        "spotcheck.verdict",
        {
            "inspection_id": inspection_id,
            "recording_id": recording_id,
            "verdict": verdict,
            "notes": notes,
            "amend": amend,
        },
    )
    _emit(result) if as_json else _print_inspection(result)


@spotcheck.command("show")
@config_option
@click.argument("inspection_id", type=click.IntRange(min=1), required=False)
@json_option
def spotcheck_show(config_path: Path | None, inspection_id: int | None, as_json: bool) -> None:
    """Show one inspection's ledger (and whether its sample still draws the same), or list them."""
    result = _call(config_path, "spotcheck.show", {"inspection_id": inspection_id})
    if as_json:
        _emit(result)
    elif inspection_id is None:
        columns = ["id", "created", "by", "unit", "start", "end", "size", "reviewed", "pending"]
        _table(
            "inspections",
            columns,
            [
                (
                    i["id"],
                    i["created_at"],
                    i["created_by"],
                    i["unit_no"] or "all",
                    i["period"]["start"],
                    i["period"]["end"],
                    i["sample_size"],
                    i["reviewed"],
                    i["pending"],
                )
                for i in result["inspections"]
            ],
        )
    else:
        _print_inspection(result)


# --- report --------------------------------------------------------------------------------------------

# (JSON field, column header) of the report tables; --json has every field.
_REPORT_COLUMNS = (
    ("recordings", "recs"),
    ("hours", "hours"),
    ("bytes", "bytes"),
    ("late_pct", "late %"),
    ("gaps", "gaps"),
    ("interrupted", "interr."),
    ("overdue", "overdue"),
    ("battery_avg_pct", "batt %"),
    ("low_battery_cameras", "low batt"),
    ("drift_max_abs_s", "drift max s"),
)


@click.command()
@config_option
@_period_options
@click.option("--unit", "unit_no", default=None, help="Only this unit.")
@click.option("--by", type=click.Choice(["unit", "officer", "both"]), default="both", show_default=True)
@json_option
def report(
    *,
    config_path: Path | None,
    month: str | None,
    start: str | None,
    end: str | None,
    unit_no: str | None,
    by: str,
    as_json: bool,
) -> None:
    """Statistics per unit and officer for a period (001 art. 28)."""
    result = _call(config_path, "report", {**_period_args(month, start, end), "unit_no": unit_no, "by": by})
    if as_json:
        _emit(result)
        return
    period = result["period"]
    click.echo(f"period {period['label']}: {period['start']} .. {period['end']}")
    for section, label in (("by_unit", "unit_no"), ("by_officer", "officer_no")):
        if section in result:
            name = "unit_name" if label == "unit_no" else "officer_name"
            headers = [label.replace("_no", ""), "name", *(h for _, h in _REPORT_COLUMNS)]
            _table(
                section.replace("_", " "),
                headers,
                [
                    (row[label] or "unknown", row[name], *(row[c] for c, _ in _REPORT_COLUMNS))
                    for row in result[section]
                ],
            )
    totals = result["totals"]
    _table("totals", [h for _, h in _REPORT_COLUMNS], [[totals[c] for c, _ in _REPORT_COLUMNS]])
