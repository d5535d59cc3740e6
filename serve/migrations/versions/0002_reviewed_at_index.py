"""index cases.reviewed_at: `streetwatch data export-reviews --since` selects cases by review time

Evidence may now also be of kind ``clean`` (the frame with nothing drawn, for retraining); the column
(String(8)) holds it already, so only the index is new. Cases filed before keep their frame and crop.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 08:00:00
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cases_reviewed_at"), ["reviewed_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cases_reviewed_at"))
