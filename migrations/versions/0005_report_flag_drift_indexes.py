"""indexes for the report at a million recordings: its period on PostgreSQL, its gaps and its drift

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-01 00:05:00.000000

On PostgreSQL the report read the period's recording rows (no skip scan of ix_recordings_report) and
scanned clock_readings for the drift; on both backends it read every gap and interruption flag's row to
find its recording. Each is covered by an index now.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


PERIOD_COLUMNS = [
    "recorded_at",
    "unit_id",
    "officer_id",
    "size",
    "duration_s",
    "ingested_at",
    "deadline_at",
    "id",
]


def upgrade() -> None:
    op.create_index("ix_recordings_period", "recordings", PERIOD_COLUMNS)
    op.create_index("ix_flags_kind_recording", "flags", ["kind", "recording_id"])
    op.create_index("ix_clock_readings_time", "clock_readings", ["measured_at", "camera_id", "offset_s"])


def downgrade() -> None:
    op.drop_index("ix_clock_readings_time", table_name="clock_readings")
    op.drop_index("ix_flags_kind_recording", table_name="flags")
    op.drop_index("ix_recordings_period", table_name="recordings")
