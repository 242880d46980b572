"""What both entry points (`ingestd`, `ingestctl`) share: the common options, loading the config, and
turning our errors into one line on stderr and their exit code.

Importing it loads no daemon, no jobs and no device watchers, so `ingestctl` stays light.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

from drivers.base import DriverError
from ingestd.config import Config, ConfigError, load_config
from ingestd.errors import IngestdError
from ingestd.evidence.verify_bag import load_trusted_keys
from ingestd.exit_codes import ExitCode
from ingestd.logging import configure_logging
from store import crashpoints
from store.errors import StoreError
from store.signing import SigningKeyError

log = structlog.get_logger()

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Config file (default: $INGESTD_CONFIG, else /etc/ingestd/config.toml, else built-in defaults).",
)

# The --json of every ingestctl command that prints a result: one document, indented, UTF-8 as is.
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")


def _load_trusted_keys(
    _context: click.Context, _param: click.Parameter, files: tuple[Path, ...]
) -> list[Ed25519PublicKey]:
    trusted: list[Ed25519PublicKey] = []
    for file in files:
        try:
            trusted.extend(load_trusted_keys(file))
        except SigningKeyError as error:
            raise click.BadParameter(str(error), param_hint="--public-key") from None
    return trusted


# Station public keys kept off the machine (`ingestd key show`): what a verifier trusts, never the
# station's own files. `verify` and `verify-export` take the same files.
trusted_keys_option = click.option(
    "--public-key",
    "--trusted-keys",
    "trusted_keys",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    multiple=True,
    callback=_load_trusted_keys,
    help="Trusted station keys: a PEM file (from `ingestd key show`) holding one key or several (other "
    "stations, or before and after a key change); repeatable.",
)


def byte_progress(console: Console | None = None) -> Progress:
    """The progress bar of a long read (bytes done, rate, time left); it disappears when done."""
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=console,
    )


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


def run_cli(command: Callable[..., object], prog_name: str) -> None:
    """Run a click command; our errors become one clear line on stderr and their exit code."""
    try:
        command.main(prog_name=prog_name, standalone_mode=False)  # type: ignore[attr-defined]
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(ExitCode.ABORTED)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except (IngestdError, StoreError, DriverError) as error:
        click.echo(f"{prog_name}: error: {error}", err=True)
        sys.exit(error.exit_code)
    except OSError as error:
        # A path the station cannot create or open (state dir, store root, socket): name it, no traceback.
        where = f": {error.filename}" if error.filename else ""
        click.echo(f"{prog_name}: error: {error.strerror or error}{where}", err=True)
        sys.exit(ExitCode.OS_ERROR)
    sys.exit(ExitCode.OK)


class CrashPointError(ConfigError):
    """`INGESTD_CRASH_AT` names no crash point (see `store.crashpoints`)."""

    template = "INGESTD_CRASH_AT={spec}: {detail}"
    wire_code = "crash-point"


def load(config_path: Path | None, *, daemon: bool = False) -> Config:
    """Load the config and configure logging once: stdout for the daemon, stderr for commands."""
    config = load_config(config_path)
    try:
        armed = crashpoints.armed()
    except ValueError as error:
        raise CrashPointError(spec=os.environ[crashpoints.ENV], detail=str(error)) from None
    configure_logging(config.daemon.log_format, stream=None if daemon else sys.stderr)
    if armed is not None:  # test-only: say so loudly, a station must never run like this
        log.warning("crash_point_armed", step=armed[0].value, hit=armed[1], variable=crashpoints.ENV)
    return config
