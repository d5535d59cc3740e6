"""cases.version: lifecycle actions so far, so that an action decided on a stale page is refused

Two reviewers with the same case open: the second one's dispatch (or relabel) used to replace the first
one's without a word. An action may now name the version it was decided on; cases filed before start at 0.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 19:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    # in place (SQLite 3.35+ drops a column itself): batch mode would copy the table, and dropping the old
    # copy fails on the evidence and history rows that refer to it
    op.drop_column("cases", "version")
