"""`ingestctl`: the administrators' command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

from ingestd.commandline import config_option, load, run_cli, trusted_keys_option
from ingestd.config import Config
from ingestd.control.client import DaemonUnavailable
from ingestd.ctl import client
from ingestd.ctl import evidence as ctl_evidence
from ingestd.ctl import read as ctl_read
from ingestd.ctl import records as ctl_records
from ingestd.display import console, problem_line, styled
from ingestd.errors import IngestdError
from ingestd.exit_codes import ExitCode
from ingestd.services import StationReader
from ingestd.verify import VerifyReport, verify_all


@click.group()
@click.version_option(package_name="ingestd", message="%(prog)s %(version)s")
def ctl() -> None:
    """ingestctl: inspect and manage the ingest station."""


def _print_report(report: VerifyReport, as_json: bool, *, recorded: bool) -> None:
    if as_json:
        click.echo(
            json.dumps(
                {
                    "clean": report.clean,
                    "recorded": recorded,
                    "key_ids": report.key_ids,
                    "pinned": report.pinned,
                    "events_checked": report.events_checked,
                    "objects_checked": report.objects_checked,
                    "problems": [problem.as_dict() for problem in report.problems],
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return
    out = console()
    for problem in report.problems:
        out.print(
            problem_line(f"{problem.area} {problem.kind} {problem.subject}", problem.detail), highlight=False
        )
    verdict = ("clean", "green") if report.clean else (f"{len(report.problems)} problem(s)", "red")
    out.print(
        styled(
            f"audit events checked: {report.events_checked}; objects checked: {report.objects_checked}; "
            f"key {', '.join(report.key_ids)}{' (pinned)' if report.pinned else ''}; ",
            verdict,
        ),
        highlight=False,
    )


@ctl.command()
@config_option
@click.option("--objects", is_flag=True, help="Also re-hash every stored object (slow: reads the store).")
@trusted_keys_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def verify(
    config_path: Path | None, objects: bool, trusted_keys: list[Ed25519PublicKey], as_json: bool
) -> None:
    """Verify the audit chain from genesis, its signed checkpoints, the catalog rows that carry custody
    meaning against their events, and (--objects) every object.

    Exit 0 when everything verifies, 3 when any problem is found (each one is listed). This process only
    reads; the daemon records the outcome for `status` (when it is not running, one line says so).
    """
    config = load(config_path)
    services = StationReader.open(config)
    try:
        if objects and not as_json and sys.stdout.isatty():  # piped: no bar, no blank line it leaves
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
                transient=True,
            ) as bar:
                task = bar.add_task("re-hashing objects", total=None)

                def advance(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                report = verify_all(services, objects=True, progress=advance, trusted_keys=trusted_keys)
        else:
            report = verify_all(services, objects=objects, trusted_keys=trusted_keys)
    finally:
        services.close()
    failure = _record(config, report, objects=objects)
    _print_report(report, as_json, recorded=failure is None)
    if failure is not None:
        click.echo(f"ingestctl: this verify was not recorded for status and metrics: {failure}", err=True)
    if not report.clean:
        raise SystemExit(ExitCode.PROBLEMS)
    if failure is not None and not isinstance(failure, DaemonUnavailable):
        raise SystemExit(failure.exit_code)


def _record(config: Config, report: VerifyReport, *, objects: bool) -> IngestdError | None:
    """Ask the daemon, the catalog's one writer, to keep the outcome; the error if it could not."""
    try:
        client.call(config, "verify.record", report.outcome(objects=objects).as_dict())
    except IngestdError as error:
        return error
    return None


ctl.add_command(ctl_records.checkout)
ctl.add_command(ctl_records.checkin)
ctl.add_command(ctl_records.custody)
ctl.add_command(ctl_records.explain)
ctl.add_command(ctl_records.flags)
ctl.add_command(ctl_records.tag)
ctl.add_command(ctl_records.hold)
ctl.add_command(ctl_records.release)
ctl.add_command(ctl_records.extend)
ctl.add_command(ctl_records.purge_command)
ctl.add_command(ctl_evidence.approve)
ctl.add_command(ctl_evidence.revoke)
ctl.add_command(ctl_evidence.approvals)
ctl.add_command(ctl_evidence.export)
ctl.add_command(ctl_evidence.copy)
ctl.add_command(ctl_evidence.view)
ctl.add_command(ctl_evidence.verify_export)
ctl.add_command(ctl_evidence.spotcheck)
ctl.add_command(ctl_evidence.report)
ctl.add_command(ctl_read.status)
ctl.add_command(ctl_read.cameras)
ctl.add_command(ctl_read.officers)
ctl.add_command(ctl_read.footage)
ctl.add_command(ctl_read.audit)


def main() -> None:
    run_cli(ctl, "ingestctl")
