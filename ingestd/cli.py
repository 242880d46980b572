"""`ingestd`: the daemon and its one-shot jobs."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click

from drivers.base import DriverError
from ingestd import schema
from ingestd.config import Config, load_config
from ingestd.errors import IngestdError
from ingestd.logging import configure_logging
from store.catalog import Catalog
from store.errors import StoreError

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Config file (default: $INGESTD_CONFIG, else /etc/ingestd/config.toml, else built-in defaults).",
)


def run_cli(command: Callable[..., object], prog_name: str) -> None:
    """Run a click command; our errors become one clear line on stderr and their exit code."""
    try:
        command.main(prog_name=prog_name, standalone_mode=False)  # type: ignore[attr-defined]
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except (IngestdError, StoreError, DriverError) as error:
        click.echo(f"{prog_name}: error: {error}", err=True)
        sys.exit(error.exit_code)
    sys.exit(0)


def load(config_path: Path | None) -> Config:
    config = load_config(config_path)
    configure_logging(config.daemon.log_format)
    return config


@click.group()
def cli() -> None:
    """ingestd: body-camera docking-station ingest daemon."""


@cli.command("check-config")
@config_option
def check_config(config_path: Path | None) -> None:
    """Validate the configuration and print it as JSON (exit 78 when it is wrong)."""
    config = load_config(config_path)
    click.echo(config.model_dump_json(indent=2))


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


def main() -> None:
    run_cli(cli, "ingestd")
