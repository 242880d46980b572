"""`ingestctl`: the administrators' command line."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ingestd.audit_anchor import AnchoredChain, AnchorReport, verify_against_vault
from ingestd.commandline import byte_progress, config_option, load, run_cli, trusted_keys_option
from ingestd.config import Config, resolve_config_path
from ingestd.control.client import DaemonUnavailable
from ingestd.ctl import client
from ingestd.ctl import evidence as ctl_evidence
from ingestd.ctl import read as ctl_read
from ingestd.ctl import records as ctl_records
from ingestd.display import console, problem_line, styled
from ingestd.errors import IngestdError
from ingestd.eviction import check_evicted_in_vault
from ingestd.exit_codes import ExitCode
from ingestd.services import StationReader, checkpoint_path
from ingestd.verify import VerifyReport, station_public_key, verify_all
from store.checkpoints import CheckpointFile
from store.signing import key_id
from store.vault import Vault


@click.group()
@click.version_option(package_name="ingestd", message="%(prog)s %(version)s")
def ctl() -> None:
    """ingestctl: inspect and manage the ingest station."""


def _anchor_dict(anchor: AnchorReport) -> dict[str, object]:
    return {
        "bucket": anchor.bucket,
        "prefix": anchor.prefix,
        "segments": anchor.segments,
        "checkpoints": anchor.checkpoints,
        "events_compared": anchor.events_compared,
        "problems": [problem.as_dict() for problem in anchor.problems],
    }


def _print_report(
    report: VerifyReport, as_json: bool, *, recorded: bool, anchor: AnchorReport | None = None
) -> None:
    clean = report.clean and (anchor is None or not anchor.problems)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "clean": clean,
                    "recorded": recorded,
                    "vault": _anchor_dict(anchor) if anchor is not None else None,
                    "key_ids": report.key_ids,
                    "pinned": report.pinned,
                    "events_checked": report.events_checked,
                    "objects_checked": report.objects_checked,
                    "objects_evicted": report.objects_evicted,
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
    if anchor is not None:
        for found in anchor.problems:
            out.print(problem_line(f"vault {found.kind} {found.key}", found.detail), highlight=False)
        out.print(
            f"vault {anchor.bucket} {anchor.prefix}: {anchor.segments} segment(s), {anchor.checkpoints} "
            f"checkpoint(s), {anchor.events_compared} anchored event(s) compared",
            highlight=False,
        )
    count = len(report.problems) + (len(anchor.problems) if anchor is not None else 0)
    verdict = ("clean", "green") if clean else (f"{count} problem(s)", "red")
    out.print(
        styled(
            f"audit events checked: {report.events_checked}; objects checked: {report.objects_checked}"
            f"{f' ({report.objects_evicted} evicted, held in the vault)' if report.objects_evicted else ''}; "
            f"key {', '.join(report.key_ids)}{' (pinned)' if report.pinned else ''}; ",
            verdict,
        ),
        highlight=False,
    )


@ctl.command()
@config_option
@click.option("--objects", is_flag=True, help="Also re-hash every stored object (slow: reads the store).")
@trusted_keys_option
@click.option(
    "--vault",
    "against_vault",
    is_flag=True,
    help="Also compare the chain with its copy anchored in the vault.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def verify(
    config_path: Path | None,
    objects: bool,
    trusted_keys: list[Ed25519PublicKey],
    against_vault: bool,
    as_json: bool,
) -> None:
    """Verify the audit chain from genesis, its signed checkpoints, the catalog rows that carry custody
    meaning against their events, (--objects) every object, and (--vault) the chain against the
    segments and checkpoints anchored in the vault.

    Exit 0 when everything verifies, 3 when any problem is found (each one is listed). This process only
    reads; the daemon records the outcome for `status` (when it is not running, one line says so).
    """
    config = load(config_path)
    services = StationReader.open(config)
    try:
        if objects and not as_json and sys.stdout.isatty():  # piped: no bar, no blank line it leaves
            with byte_progress() as bar:
                task = bar.add_task("re-hashing objects", total=None)

                def advance(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                report = verify_all(services, objects=True, progress=advance, trusted_keys=trusted_keys)
        else:
            report = verify_all(services, objects=objects, trusted_keys=trusted_keys)
        anchor = None
        if against_vault:
            vault = Vault(config.vault.settings(resolve_config_path(config_path) or "(built-in defaults)"))
            with services.catalog.transaction() as db:
                chain = AnchoredChain(
                    key_id(station_public_key(config)),
                    CheckpointFile(checkpoint_path(config), set_append_only=False),
                )
                anchor = verify_against_vault(db, chain, vault)
            evicted = check_evicted_in_vault(services, vault)
            anchor = dataclasses.replace(anchor, problems=(*anchor.problems, *evicted))
    finally:
        services.close()
    failure = _record(config, report, objects=objects)
    _print_report(report, as_json, recorded=failure is None, anchor=anchor)
    if failure is not None:
        click.echo(f"ingestctl: this verify was not recorded for status and metrics: {failure}", err=True)
    if not report.clean or (anchor is not None and anchor.problems):
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
ctl.add_command(ctl_read.replication_command, name="replication")


def main() -> None:
    run_cli(ctl, "ingestctl")
