"""`ingestd`: the daemon and its one-shot jobs."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import click
from cryptography.hazmat.primitives import serialization
from rich.console import Console

from ingestd import replication, schema
from ingestd.commandline import byte_progress, config_option, json_option, load, print_json, run_cli
from ingestd.config import ConfigError, check_for_run, load_config, resolve_config_path
from ingestd.daemon import Daemon, ingest_settings, lock_state
from ingestd.demo import run_demo
from ingestd.errors import IngestdError
from ingestd.eviction import evict
from ingestd.exit_codes import ExitCode
from ingestd.importer import run_import
from ingestd.logging import configure_logging
from ingestd.replicator import PassResult, Replicator
from ingestd.services import Services
from ingestd.session import SessionSummary
from ingestd.vault_scrub import scrub
from store.catalog import Catalog
from store.models import ReplicationState, SessionState
from store.signing import Signer, key_id
from store.types import utcnow
from store.vault import CheckReport, Vault, VaultError, VaultIntegrityError


@click.group()
@click.version_option(package_name="ingestd", message="%(prog)s %(version)s")
def cli() -> None:
    """ingestd: body-camera docking-station ingest daemon."""


@cli.command("check-config")
@config_option
def check_config(config_path: Path | None) -> None:
    """Validate the configuration as `run` does and print it as JSON, passwords masked (exit 78 when it
    is wrong)."""
    config = load_config(config_path)
    source = resolve_config_path(config_path)
    for unchecked in check_for_run(config, config_path):
        click.echo(f"warning: {unchecked}", err=True)
    click.echo(config.redacted_json())
    inline = [str(i) for i, rule in enumerate(config.camera) if rule.password]
    if inline and source is not None and source.stat().st_mode & 0o044:
        click.echo(
            f"warning: camera[{', '.join(inline)}] password is inline in {source}, which group or others "
            "can read (ingestctl users must): move it to password_file",
            err=True,
        )


@cli.command()
@config_option
def migrate(config_path: Path | None) -> None:
    """Bring the catalog database to this release's schema."""
    config = load(config_path)
    catalog = Catalog.open(config.catalog.url)
    try:
        schema.upgrade(catalog.engine)
        click.echo(f"catalog at {schema.current_revision(catalog.engine)}")
    finally:
        catalog.close()


@cli.command()
@config_option
def run(config_path: Path | None) -> None:
    """Run the daemon: reconcile, report READY to systemd, ingest docked cameras until SIGTERM."""
    config = load(config_path, daemon=True)
    check_for_run(config, config_path)  # as check-config does
    daemon = Daemon(config, config_path)
    daemon.install_signal_handlers()
    raise SystemExit(daemon.run())


@cli.group()
def key() -> None:
    """The station's signing key (audit checkpoints and evidence exports)."""


@key.command("show")
@config_option
@json_option
def key_show(config_path: Path | None, as_json: bool) -> None:
    """Print the station's public key (PEM) and its fingerprint, to publish to courts and receivers:
    `ingestctl verify-export BAG --public-key FILE` calls a bag valid only if signed by this key."""
    config = load(config_path)
    public_key = Signer.load(config.daemon.state_dir).public_key
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    shown = {"key_id": key_id(public_key), "der_sha256": hashlib.sha256(der).hexdigest(), "pem": pem.decode()}
    if as_json:
        print_json(shown)
        return
    # The fingerprint lines start with '#', outside the PEM block: the output is itself a usable key file.
    click.echo(f"# ingestd station key {shown['key_id']}")
    click.echo(f"# SHA-256 of the DER key: {shown['der_sha256']}")
    click.echo(shown["pem"], nl=False)


@cli.command("import")
@config_option
@click.argument("path", type=click.Path(path_type=Path, file_okay=False))
@click.option("--device-id", required=True, help="The camera's device serial (GA/T 947 cSerial, up to 7).")
@click.option("--officer-no", default=None, help="The officer who recorded (userNo, up to 6).")
@click.option("--json", "as_json", is_flag=True, help="Print the session summary as JSON.")
def import_(
    config_path: Path | None, path: Path, device_id: str, officer_no: str | None, as_json: bool
) -> None:
    """Ingest a mounted volume or directory once (card reader), through the dock pipeline."""
    config = load(config_path)
    services = Services.open(config, cameras=False)  # the operator names the camera; no password needed
    try:
        summary = run_import(
            services,
            path,
            device_id=device_id,
            officer_no=officer_no,
            settings=ingest_settings(config),
            clock=utcnow,
        )
    finally:
        services.close()
    if as_json:
        click.echo(json.dumps(summary_dict(summary), ensure_ascii=False))
    else:
        click.echo(
            f"{summary.state.value}: {summary.files} file(s), {summary.bytes} bytes, "
            f"{summary.late} late, {summary.errors} error(s), {len(summary.rejected)} rejected"
        )
    if summary.state is not SessionState.DONE:
        raise SystemExit(ExitCode.INGEST_INCOMPLETE)


@cli.command()
@click.option("--files", default=4, show_default=True, help="Recordings per simulated camera.")
@click.option("--size-mib", default=16, show_default=True, help="Size of each recording, MiB.")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Keep state here instead of a temporary directory.",
)
@click.option("--keep", is_flag=True, help="Keep the temporary directory afterwards.")
def demo(files: int, size_mib: int, workdir: Path | None, keep: bool) -> None:
    """Start the daemon on temporary state, dock three simulated cameras, verify everything."""
    configure_logging("console", stream=sys.stderr)
    if not run_demo(Console(), workdir=workdir, files=files, size_mib=size_mib, keep=keep):
        raise SystemExit(ExitCode.PROBLEMS)


class VaultCheckError(IngestdError):
    """`ingestd vault check` found the vault unfit for evidence: nothing may be sent to it."""

    template = "vault check failed: {detail}"
    exit_code = ExitCode.CONFIG  # the configured vault is wrong, as systemd's ExecStartPre would see it
    wire_code = "vault-check"


@cli.group()
def vault() -> None:
    """The agency vault: an S3 bucket with Object Lock in compliance mode."""


@vault.command("check")
@config_option
@json_option
def vault_check(config_path: Path | None, as_json: bool) -> None:
    """Prove the configured bucket keeps evidence before anything is sent (exit 78 when it does not)."""
    config = load(config_path)
    settings = config.vault.settings(resolve_config_path(config_path) or "(built-in defaults)")
    try:
        report = Vault(settings).check(now=utcnow())
    except VaultIntegrityError:
        raise
    except VaultError as error:
        raise VaultCheckError(detail=str(error)) from None
    if as_json:
        print_json(vault_check_dict(report))
        return
    click.echo(
        f"vault bucket {report.bucket} at {report.endpoint} keeps evidence: versioning {report.versioning}, "
        f"Object Lock {report.object_lock}; probe {report.probe_key} locked in compliance mode until "
        f"{report.probe_retain_until.isoformat()}: its delete was refused ({report.delete_refused}), "
        f"shortening its retention was refused ({report.shorten_refused})"
    )


@vault.command("scrub")
@config_option
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=None,
    help="Check only N objects, least recently checked first.",
)
@json_option
def vault_scrub(config_path: Path | None, sample: int | None, as_json: bool) -> None:
    """Read replicated objects back from the vault and check size, BLAKE3 and SHA-256 (3: a failure)."""
    config = load(config_path)
    settings = config.vault.settings(resolve_config_path(config_path) or "(built-in defaults)")
    services = Services.open(config, migrate=False, cameras=False)
    try:
        vault_client = Vault(settings)
        if not as_json and sys.stderr.isatty():
            with byte_progress(Console(stderr=True)) as bar:
                task = bar.add_task("reading back from the vault", total=None)
                report = scrub(
                    services,
                    vault_client,
                    now=utcnow(),
                    sample=sample,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
        else:
            report = scrub(services, vault_client, now=utcnow(), sample=sample)
        services.audit.checkpoint(services.catalog)
    finally:
        services.close()
    if as_json:
        print_json(
            {
                "checked": report.checked,
                "bytes": report.bytes_read,
                "failures": report.failures,
                "clean": report.clean,
            }
        )
    else:
        for blake3, problem in sorted(report.failures.items()):
            click.echo(f"PROBLEM {blake3}: {problem}")
        verdict = "clean" if report.clean else f"{len(report.failures)} problem(s)"
        click.echo(f"vault scrub: {report.checked} object(s), {report.bytes_read} bytes read back; {verdict}")
    if not report.clean:
        raise SystemExit(ExitCode.PROBLEMS)


class StoreStillFullError(IngestdError):
    """`ingestd vault evict` could not bring the store below its high-water mark."""

    template = "store still past its high-water mark: {detail}"
    exit_code = ExitCode.STORE_STILL_FULL
    wire_code = "store-still-full"


@vault.command("evict")
@config_option
@click.option(
    "--dry-run", is_flag=True, help="Show what would be evicted; touch neither the vault nor the store."
)
@json_option
def vault_evict(config_path: Path | None, dry_run: bool, as_json: bool) -> None:
    """Evict the oldest local objects the vault holds, confirmed, until the store is at its low-water mark."""
    config = load(config_path)
    where = resolve_config_path(config_path) or "(built-in defaults)"
    if not config.vault.evicts:
        raise ConfigError(
            path=where, detail="eviction is off: it needs vault.enabled and vault.evict_high_water_percent"
        )
    settings = config.vault.settings(where)
    # The daemon evicts by itself; a real run beside it could remove what one of its readers is about to open.
    lock_fd = None if dry_run else lock_state(config.daemon.state_dir)
    try:
        services = Services.open(config, migrate=False, cameras=False)
        try:
            report = evict(services, Vault(settings), now=utcnow(), dry_run=dry_run)
            if report.evicted and not dry_run:
                services.audit.checkpoint(services.catalog)
        finally:
            services.close()
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    if as_json:
        print_json(report.as_json())
    else:
        for blake3, why in report.kept.items():
            click.echo(f"KEPT {blake3}: {why}")
        for blake3, error in report.failed.items():
            click.echo(f"FAILED {blake3}: {error}")
        verb = "would evict" if dry_run else "evicted"
        after = report.after or report.before
        click.echo(
            f"store {report.before.percent:.1f}% full (high-water {report.high_water_percent}%, low-water "
            f"{report.low_water_percent}%); {verb} {len(report.evicted)} object(s), "
            f"{report.freed_bytes} bytes" + ("" if dry_run else f"; now {after.percent:.1f}% full")
        )
    if report.above_high_water:
        raise StoreStillFullError(
            detail=f"{(report.after or report.before).percent:.1f}% full after eviction; "
            f"{len(report.kept)} object(s) kept, {len(report.failed)} failed"
        )


class ReplicationIncompleteError(IngestdError):
    """`ingestd replicate --once` left items that are not replicated and verified in the vault."""

    template = "replication incomplete: {detail}"
    exit_code = ExitCode.REPLICATION_INCOMPLETE
    wire_code = "replication-incomplete"


@cli.command()
@config_option
@click.option(
    "--once", is_flag=True, help="Drain the queue once and exit (the daemon replicates continuously)."
)
@json_option
def replicate(config_path: Path | None, once: bool, as_json: bool) -> None:
    """Send every queued object and audit segment to the vault, confirm each from the server, and exit."""
    if not once:
        raise click.UsageError("only --once is supported: `ingestd run` replicates continuously")
    config = load(config_path)
    where = resolve_config_path(config_path) or "(built-in defaults)"
    if not config.vault.enabled:
        raise ConfigError(path=where, detail="vault.enabled is false: there is no vault to replicate to")
    settings = config.vault.settings(where)
    lock_fd = lock_state(config.daemon.state_dir)  # the daemon's own replicator must not run beside us
    try:
        services = Services.open(config, migrate=False, cameras=False)
        try:
            replicator = Replicator(services, Vault(settings))
            replicator.backfill()
            objects = replicator.drain(ignore_backoff=True)
            # Sign what this run appended, so the last segment of the chain is anchored too.
            services.audit.checkpoint(services.catalog)
            anchored = replicator.drain(ignore_backoff=True)
            result = PassResult(
                objects.replicated + anchored.replicated,
                objects.failed + anchored.failed,
                objects.locks_changed + anchored.locks_changed,
            )
            with services.catalog.transaction() as db:
                queue = replication.summary(db)
        finally:
            services.close()
    finally:
        os.close(lock_fd)
    left = sum(count for state, count in queue.counts.items() if state != ReplicationState.REPLICATED)
    if as_json:
        print_json(
            {
                "replicated_now": result.replicated,
                "failed_now": result.failed,
                "locks_changed": result.locks_changed,
                "counts": queue.counts,
                "last_error": queue.last_error,
                "complete": left == 0,
            }
        )
    else:
        click.echo(
            f"replicated {result.replicated} now, {queue.counts[ReplicationState.REPLICATED]} in all; "
            f"{left} not replicated; {result.locks_changed} lock change(s) pushed"
        )
    if left:
        raise ReplicationIncompleteError(
            detail=f"{left} item(s) not replicated and verified; last error: {queue.last_error or '-'}"
        )


def vault_check_dict(report: CheckReport) -> dict[str, object]:
    return {
        "endpoint": report.endpoint,
        "bucket": report.bucket,
        "versioning": report.versioning,
        "object_lock": report.object_lock,
        "probe_key": report.probe_key,
        "probe_retain_until": report.probe_retain_until.isoformat(),
        "delete_refused": report.delete_refused,
        "shorten_refused": report.shorten_refused,
        "usable": True,
    }


def summary_dict(summary: SessionSummary) -> dict[str, object]:
    return {
        "port": summary.port,
        "device_id": summary.device_id,
        "state": summary.state.value,
        "reason": summary.reason,
        "files": summary.files,
        "bytes": summary.bytes,
        "deduplicated": summary.deduplicated,
        "late": summary.late,
        "errors": summary.errors,
        "deleted": summary.deleted,
        "seconds": summary.seconds,
        "copy_seconds": summary.copy_seconds,
        "read_back_seconds": summary.read_back_seconds,
        "rejected": summary.rejected,
    }


def main() -> None:
    run_cli(cli, "ingestd")
