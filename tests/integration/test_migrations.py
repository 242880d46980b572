"""One linear Alembic history that matches the models exactly, up and down, on both backends."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from ingestd import schema
from store.catalog import Catalog
from store.models import Base


def test_single_head() -> None:
    assert len(schema.heads()) == 1


def test_upgrade_from_empty_matches_the_models(empty_database_url: str) -> None:
    catalog = Catalog.open(empty_database_url)
    try:
        schema.upgrade(catalog.engine)
        assert schema.current_revision(catalog.engine) == schema.heads()[0]
        with catalog.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
        assert differences == []
    finally:
        catalog.close()


def test_downgrade_to_base_then_upgrade_again(empty_database_url: str) -> None:
    catalog = Catalog.open(empty_database_url)
    try:
        schema.upgrade(catalog.engine)
        schema.downgrade(catalog.engine, "base")
        remaining = set(inspect(catalog.engine).get_table_names()) - {"alembic_version"}
        assert remaining == set()
        schema.upgrade(catalog.engine)
        tables = set(inspect(catalog.engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
    finally:
        catalog.close()


def test_require_current_refuses_an_unmigrated_catalog(empty_database_url: str) -> None:
    catalog = Catalog.open(empty_database_url)
    try:
        with pytest.raises(schema.SchemaError, match="ingestd migrate"):
            schema.require_current(catalog.engine)
        schema.upgrade(catalog.engine)
        schema.require_current(catalog.engine)
    finally:
        catalog.close()
