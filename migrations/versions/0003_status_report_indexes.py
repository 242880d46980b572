"""indexes for status and report at a million recordings

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 21:50:00.000000

The latest session of each dock, the check-in of a dock session and the flags of a kind in a period were
found by scanning their tables; at a million recordings those scans grow with the station's history.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_dock_sessions_dock", "dock_sessions", ["dock_id", "id"])
    op.create_index("ix_custody_session", "custody_events", ["dock_session_id"])
    op.create_index("ix_flags_kind_time", "flags", ["kind", "raised_at"])


def downgrade() -> None:
    op.drop_index("ix_flags_kind_time", table_name="flags")
    op.drop_index("ix_custody_session", table_name="custody_events")
    op.drop_index("ix_dock_sessions_dock", table_name="dock_sessions")
