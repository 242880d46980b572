"""`ingestctl` commands for approvals, evidence exports, copies and viewing, spot checks and reports.

All but `verify-export` ask the daemon over its control socket, which identifies the caller by the
kernel's peer credentials; `verify-export` reads only the bag, so a court can run it anywhere. `view`
gets the recording as an open file passed over the socket, never by reading the store itself.

Exit codes: 0 done; 2 wrong flag, argument or id (and `view` to a terminal); 3 (verify-export) the bag
has problems, each listed; 17 (verify-export) the bag is consistent but its signer is unverified (no
trusted station key given, see `ingestd key show`); 13 permission denied (the caller's groups give no
role allowed for the command); 14 no valid approval (missing, expired, revoked, out of scope,
confidential); 15 nothing written (DEST or --output FILE exists, not writable, the reader of a pipe went
away); 16 the store's bytes do not match the catalog (nothing exported or copied; for `view`, what was
handed over is not the catalog's: investigate); other codes come from the daemon or the socket (e.g.
daemon not running).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ingestd.commandline import config_option, json_option, load, print_json, trusted_keys_option
from ingestd.ctl import client
from ingestd.display import console, local_time, problem_line, styled, table
from ingestd.errors import IngestdError, UsageError
from ingestd.evidence.copies import CopyError
from ingestd.evidence.destination import deliver_into
from ingestd.evidence.errors import ExportError
from ingestd.evidence.verify_bag import verify_bag
from ingestd.exit_codes import ExitCode
from store.errors import IntegrityError

DELIVERY_TIMEOUT_S = 6 * 3600.0  # the daemon answers only when the files are written, proven and recorded
VIEW_CHUNK = 1 << 20

F = TypeVar("F", bound=Callable[..., Any])


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    console().print(table(title, columns, rows, overflow="fold"))


def _period_options(func: F) -> F:
    func = click.option("--month", default=None, help="A calendar month, YYYY-MM (local time).")(func)
    func = click.option("--from", "start", default=None, help="First day, YYYY-MM-DD (local time).")(func)
    return click.option("--to", "end", default=None, help="Last day, YYYY-MM-DD, included.")(func)


def _period_args(month: str | None, start: str | None, end: str | None) -> dict[str, Any]:
    if month is None and (start is None or end is None):
        raise click.UsageError("give --month YYYY-MM, or both --from and --to YYYY-MM-DD")
    return {"month": month, "from": start, "to": end}


# --- approvals -----------------------------------------------------------------------------------------


def _print_approval(approval: dict[str, Any], zone: ZoneInfo) -> None:
    scope = []
    if approval["scope_recording_ids"]:
        scope.append("recordings " + ", ".join(map(str, approval["scope_recording_ids"])))
    if approval["scope_case_id"]:
        scope.append(f"(case {approval['scope_case_id']} as tagged when granted)")
    click.echo(
        f"approval {approval['id']} ({approval['state']}): by {approval['approver']} "
        f"for {approval.get('grantee') or 'nobody'}, "
        f"purpose {approval['purpose']!r}; scope {' '.join(scope)}; "
        f"{'confidential allowed' if approval['allows_confidential'] else 'no confidential'}; "
        f"expires {local_time(approval['expires_at'], zone)}"
        + (f"; revoked {local_time(approval['revoked_at'], zone)}" if approval["revoked_at"] else "")
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
@click.option(
    "--case", "case_id", default=None, help="A case id: the recordings tagged with it now are in scope."
)
@click.option("--expires-in", default=None, help="Validity from now: 90m, 12h, 30d (at most 90 days).")
@click.option("--expires-at", default=None, help="Expiry, ISO 8601 with a zone: 2026-04-01T18:00+08:00.")
@click.option("--allow-confidential", is_flag=True, help="Also cover confidential recordings in scope.")
@click.option(
    "--for",
    "grantee",
    required=True,
    metavar="USER",
    help="The OS user who alone may use it (never the approver themselves).",
)
@click.option("--requested-by", default=None, help="Who asked for the footage (recorded as the extractor).")
@json_option
def approve(
    *,
    config_path: Path | None,
    grantee: str,
    purpose: str,
    recordings: tuple[int, ...],
    case_id: str | None,
    expires_in: str | None,
    expires_at: str | None,
    allow_confidential: bool,
    requested_by: str | None,
    as_json: bool,
) -> None:
    """Approve one user's viewing, copying or exporting of footage (approver; 000 art. 16, 004 art. 20)."""
    if not recordings and not case_id:
        raise click.UsageError("give a scope: --recording ID (repeatable) and/or --case CASE")
    if (expires_in is None) == (expires_at is None):
        raise click.UsageError("give exactly one of --expires-in or --expires-at")
    config = load(config_path)
    result = client.call(
        config,
        "approve",
        {
            "grantee": grantee,
            "purpose": purpose,
            "recording_ids": list(recordings),
            "case_id": case_id,
            "expires_in": expires_in,
            "expires_at": expires_at,
            "allows_confidential": allow_confidential,
            "requested_by": requested_by,
        },
    )
    print_json(result) if as_json else _print_approval(result, config.deadlines.zone)
    uncovered = result["confidential_not_covered"]
    if uncovered:
        click.echo(
            f"ingestctl: warning: recording(s) {', '.join(map(str, uncovered))} in scope are confidential "
            "and this approval does not cover them (they will be refused); approve again with "
            "--allow-confidential if it should",
            err=True,
        )


@click.command()
@config_option
@click.argument("approval_id", type=click.IntRange(min=1))
@click.option("--reason", required=True, help="Why the approval is withdrawn.")
@json_option
def revoke(config_path: Path | None, approval_id: int, reason: str, as_json: bool) -> None:
    """Revoke an approval: no export or viewing under it from now on."""
    config = load(config_path)
    result = client.call(config, "revoke", {"approval_id": approval_id, "reason": reason})
    print_json(result) if as_json else _print_approval(result, config.deadlines.zone)


@click.command()
@config_option
@click.argument("approval_id", type=click.IntRange(min=1), required=False)
@json_option
def approvals(config_path: Path | None, approval_id: int | None, as_json: bool) -> None:
    """List approvals (newest first), or show one."""
    config = load(config_path)
    result = client.call(config, "approvals", {"approval_id": approval_id})
    if as_json:
        print_json(result)
        return
    zone = config.deadlines.zone
    for approval in result["approvals"]:
        _print_approval(approval, zone)
    if not result["approvals"]:
        click.echo("approvals: none")


# --- export and verification ---------------------------------------------------------------------------


def _delivery_command(
    name: str, summary: str, describe: Callable[[dict[str, Any]], str], error: type[ExportError]
) -> click.Command:
    """`export` and `copy`: an approval, optionally some of its recordings, a new DEST; `describe` says
    what was written (unless --json). DEST.partial is made here, with the caller's rights, and handed
    to the daemon open (see `ingestd.evidence.destination`)."""

    @click.command(name, help=summary)
    @config_option
    @click.option("--approval", "approval_id", type=click.IntRange(min=1), required=True, help="Approval id.")
    @click.option(
        "--recording",
        "recordings",
        type=click.IntRange(min=1),
        multiple=True,
        help=f"{name.capitalize()} only these recordings (each must be in the approval's scope).",
    )
    @click.argument("dest", type=click.Path(path_type=Path))
    @json_option
    def deliver(
        *,
        config_path: Path | None,
        approval_id: int,
        recordings: tuple[int, ...],
        dest: Path,
        as_json: bool,
    ) -> None:
        absolute = dest.expanduser().absolute()  # named in the daemon's records as the caller sees it
        args = {"approval_id": approval_id, "dest": str(absolute), "recording_ids": list(recordings)}
        result = deliver_into(
            absolute,
            error,
            lambda fd: client.ask(config_path, name, args, timeout=DELIVERY_TIMEOUT_S, pass_fd=fd),
        )
        print_json(result) if as_json else click.echo(describe(result))

    return deliver


def _describe_export(result: dict[str, Any]) -> str:
    return (
        f"export {result['export_id']}: {len(result['recording_ids'])} recording(s), "
        f"{result['payload_bytes']} bytes to {result['destination']}\n"
        f"signed by station key {result['key_id']} (compare with `ingestd key show` on the station); "
        f"tag manifest SHA-256 {result['tag_manifest_sha256']}"
    )


def _describe_copy(result: dict[str, Any]) -> str:
    where = result["destination"]
    return (
        f"copied {len(result['recording_ids'])} recording(s), {result['bytes']} bytes to {where}\n"
        f"check with: cd {shlex.quote(where)} && sha256sum -c {result['sums_file']}"
    )


export = _delivery_command(
    "export",
    "Write the approved recordings to DEST as a signed BagIt bag (DEST must not exist).",
    _describe_export,
    ExportError,
)
copy = _delivery_command(
    "copy",
    "Copy the approved recordings as plain files into DEST (must not exist), with a SHA256SUMS file.",
    _describe_copy,
    CopyError,
)


class ViewOutputError(IngestdError):
    template = "view: nothing written to {target}: {detail}"
    exit_code = ExitCode.EXPORT_FAILED
    wire_code = "view-output"


class ViewIntegrityError(IntegrityError, IngestdError):
    """What ingestd handed over is not the recording the catalog describes: investigate (exit 3)."""

    template = "view of recording {recording}: the file ingestd handed over {detail}"
    wire_code = "view-integrity"


def _view_target(output: Path | None) -> int:
    """Where the bytes go, checked before the daemon is asked (a refused target is no viewing)."""
    if output is None:
        if sys.stdout.isatty():
            raise UsageError(detail="refusing to write video to a terminal: use --output FILE or a pipe")
        return sys.stdout.fileno()
    try:
        return os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise ViewOutputError(target=output, detail=error.strerror or str(error)) from None


def stream_verified(source: int, target: int, recording: dict[str, Any], target_name: str) -> None:
    """Copy the handed-over file to `target`, checking it is the catalog's: type, size, then SHA-256."""
    rid, size = recording["recording_id"], recording["size"]
    info = os.fstat(source)
    if not stat.S_ISREG(info.st_mode):
        raise ViewIntegrityError(recording=rid, detail="is not a regular file")
    if info.st_size != size:
        raise ViewIntegrityError(recording=rid, detail=f"has {info.st_size} bytes, the catalog says {size}")
    digest = hashlib.sha256()
    done = 0
    while done < size:
        chunk = os.pread(source, min(VIEW_CHUNK, size - done), done)  # our own offset, not the daemon's
        if not chunk:
            break
        digest.update(chunk)
        pending = memoryview(chunk)
        try:
            while pending:
                pending = pending[os.write(target, pending) :]
        except BrokenPipeError:
            raise ViewOutputError(
                target=target_name, detail=f"the reader went away after {done} of {size} bytes"
            ) from None
        done += len(chunk)
    if done != size:
        raise ViewIntegrityError(recording=rid, detail=f"ended after {done} of {size} bytes")
    if digest.hexdigest() != recording["sha256"]:
        raise ViewIntegrityError(
            recording=rid, detail=f"has SHA-256 {digest.hexdigest()}, the catalog says {recording['sha256']}"
        )


@click.command()
@config_option
@click.option("--approval", "approval_id", type=click.IntRange(min=1), required=True, help="Approval id.")
@click.argument("recording_id", type=click.IntRange(min=1))
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write to this new file (created mode 0600) instead of standard output.",
)
def view(*, config_path: Path | None, approval_id: int, recording_id: int, output: Path | None) -> None:
    """Stream one approved recording to standard output (a pipe: `| mpv -`) or to a new --output FILE.

    ingestd opens the recording and hands the open file over the control socket, so the caller needs no
    access to the store; what arrives is checked against the catalog's size and SHA-256 (exit 16 if not).
    """
    target = _view_target(output)
    try:
        config = load(config_path)
        recording, source = client.call_with_fd(
            config, "view", {"approval_id": approval_id, "recording_id": recording_id}
        )
        try:
            stream_verified(source, target, recording, str(output or "standard output"))
        finally:
            os.close(source)
        if output is not None:  # stdout carries the video itself: nothing else goes there
            click.echo(
                f"wrote recording {recording_id} to {output}: {recording['size']} bytes, "
                f"SHA-256 {recording['sha256']} (matches the catalog)"
            )
    except BaseException:
        if output is not None:
            output.unlink(missing_ok=True)  # ours (O_EXCL): a partial or unverified copy is not left
        raise
    finally:
        if output is not None:
            os.close(target)


@click.command("verify-export")
@click.argument("path", type=click.Path(path_type=Path, exists=True, file_okay=False))
@trusted_keys_option
@json_option
def verify_export(path: Path, trusted_keys: list[Ed25519PublicKey], as_json: bool) -> None:
    """Check an exported bag on its own, without the station: exit 0 if it verifies and is signed by a
    trusted station key, 3 if it has problems, 17 if it is consistent but no trusted key was given."""
    report = verify_bag(path, trusted_keys=trusted_keys)
    if as_json:
        print_json(report.as_dict())
    else:
        out = console()
        for problem in report.problems:
            out.print(problem_line(f"{problem.kind} {problem.subject}", problem.detail), highlight=False)
        if report.valid:
            verdict = styled(f"signed by trusted station key {report.key_id}; ", ("valid", "green"))
        elif report.consistent:
            verdict = styled(
                f"signed by key {report.key_id}, which is not checked against the station's; ",
                ("content consistent, signer unverified", "yellow"),
                " (give the station key: --public-key FILE or --trusted-keys FILE)",
            )
        else:
            verdict = styled(f"key {report.key_id}; ", (f"{len(report.problems)} problem(s)", "red"))
        summary = f"{path}: {report.payload_files} file(s), {report.payload_bytes} bytes; "
        out.print(styled(summary, verdict), highlight=False)
    if not report.consistent:
        raise SystemExit(ExitCode.PROBLEMS)
    if not report.signer_verified:
        raise SystemExit(ExitCode.SIGNER_UNVERIFIED)


# --- spot checks ---------------------------------------------------------------------------------------


def _print_inspection(inspection: dict[str, Any], zone: ZoneInfo) -> None:
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
                local_time(i["reviewed_at"], zone),
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
    config = load(config_path)
    result = client.call(
        config,
        "spotcheck.sample",
        {
            **_period_args(month, start, end),
            "unit_no": unit_no,
            "size": size,
            "seed": seed,
            "note": note,
        },
    )
    print_json(result) if as_json else _print_inspection(result, config.deadlines.zone)


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
    config = load(config_path)
    result = client.call(
        config,
        "spotcheck.verdict",
        {
            "inspection_id": inspection_id,
            "recording_id": recording_id,
            "verdict": verdict,
            "notes": notes,
            "amend": amend,
        },
    )
    print_json(result) if as_json else _print_inspection(result, config.deadlines.zone)


@spotcheck.command("show")
@config_option
@click.argument("inspection_id", type=click.IntRange(min=1), required=False)
@json_option
def spotcheck_show(config_path: Path | None, inspection_id: int | None, as_json: bool) -> None:
    """Show one inspection's ledger (and whether its sample still draws the same), or list them."""
    config = load(config_path)
    result = client.call(config, "spotcheck.show", {"inspection_id": inspection_id})
    if as_json:
        print_json(result)
    elif inspection_id is None:
        zone = config.deadlines.zone
        columns = ["id", "created", "by", "unit", "start", "end", "size", "reviewed", "pending"]
        _table(
            "inspections",
            columns,
            [
                (
                    i["id"],
                    local_time(i["created_at"], zone),
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
        _print_inspection(result, config.deadlines.zone)


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
    result = client.ask(
        config_path, "report", {**_period_args(month, start, end), "unit_no": unit_no, "by": by}
    )
    if as_json:
        print_json(result)
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
