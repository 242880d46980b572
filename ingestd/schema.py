"""Bringing a catalog database to the schema this release expects, through Alembic."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from ingestd.errors import IngestdError
from ingestd.exit_codes import ExitCode


class SchemaError(IngestdError):
    template = "catalog schema: {detail}"
    exit_code = ExitCode.SCHEMA_MISMATCH


def migrations_dir() -> Path:
    return Path(str(resources.files("migrations")))


def alembic_config() -> AlembicConfig:
    """Alembic settings without an ini file; the connection is handed over in `attributes`."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def _run(engine: Engine, action: str, revision: str) -> None:
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


def upgrade(engine: Engine, revision: str = "head") -> None:
    _run(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    _run(engine, "downgrade", revision)


def heads() -> list[str]:
    return list(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def require_current(engine: Engine) -> None:
    """Refuse to work on a catalog older or newer than this release (readers must not migrate)."""
    current = current_revision(engine)
    expected = heads()
    if current not in expected:
        raise SchemaError(
            detail=f"database is at {current or 'an empty schema'}, this release needs {expected[0]}: "
            "run `ingestd migrate`"
        )
