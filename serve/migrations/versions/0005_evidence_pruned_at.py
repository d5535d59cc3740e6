"""evidence.pruned_at: when `streetwatch evidence prune` deleted the picture (retention); the case stays

Evidence files were never deleted, so a bureau could not keep pictures of long-closed cases only as long as
its retention rules allow. A pruned picture keeps its row, marked with the time, so that the API and the
review page say the picture was removed by retention instead of failing to find it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 04:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evidence", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("evidence", "pruned_at")  # in place, as 0003 (SQLite 3.35+)
