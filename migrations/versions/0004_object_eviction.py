"""local eviction of objects the vault holds

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 23:50:00.000000

`stored_objects.evicted_at`: set when the local copy of an object was removed because the vault holds
a confirmed, locked copy (issue 13). The row stays live: its recordings are read back from the vault.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import store.types

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stored_objects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("evicted_at", store.types.UTCDateTime(timezone=True), nullable=True))
        # status, replication and the metrics count evicted objects: no scan of a million rows
        batch_op.create_index("ix_stored_objects_evicted", ["evicted_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("stored_objects", schema=None) as batch_op:
        batch_op.drop_index("ix_stored_objects_evicted")
        batch_op.drop_column("evicted_at")
