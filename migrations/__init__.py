"""Alembic migration environment for the catalog."""
