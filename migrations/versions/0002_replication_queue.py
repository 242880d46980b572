"""replication queue to the vault, and the unreplicated flag kind

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import store.types

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

FLAG_KINDS = (
    "late",
    "overdue",
    "gap",
    "interrupted",
    "drift",
    "failed-file",
    "identity-mismatch",
    "store-full",
)


def _flag_kinds(*kinds: str) -> str:
    listed = ", ".join(f"'{kind}'" for kind in kinds)
    return f"kind IN ({listed})"


def upgrade() -> None:
    op.create_table(
        "replication_queue",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "object",
                "audit",
                name="replicationkind",
                native_enum=False,
                create_constraint=True,
                length=24,
            ),
            nullable=False,
        ),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "pending",
                "uploading",
                "replicated",
                "failed",
                name="replicationstate",
                native_enum=False,
                create_constraint=True,
                length=24,
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("enqueued_at", store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("upload_id", sa.String(length=255), nullable=True),
        sa.Column("parts", sa.JSON(), nullable=False),
        sa.Column("replicated_at", store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("version_id", sa.String(length=255), nullable=True),
        sa.Column("retain_until", store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("legal_hold", sa.Boolean(), nullable=False),
        sa.Column("scrubbed_at", store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("scrub_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replication_queue")),
        sa.UniqueConstraint("kind", "subject", name="uq_replication_queue_kind_subject"),
    )
    with op.batch_alter_table("replication_queue", schema=None) as batch_op:
        batch_op.create_index("ix_replication_queue_state_next", ["state", "next_attempt_at"], unique=False)
    # The flag kind's CHECK lists its values: widen it for `unreplicated`.
    with op.batch_alter_table("flags", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_flags_flagkind"), type_="check")
        batch_op.create_check_constraint("flagkind", _flag_kinds(*FLAG_KINDS, "unreplicated"))


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM flags WHERE kind = 'unreplicated'"))
    with op.batch_alter_table("flags", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_flags_flagkind"), type_="check")
        batch_op.create_check_constraint("flagkind", _flag_kinds(*FLAG_KINDS))
    with op.batch_alter_table("replication_queue", schema=None) as batch_op:
        batch_op.drop_index("ix_replication_queue_state_next")
    op.drop_table("replication_queue")
