"""outbox.lease_token: who holds an event's delivery lease, so that only the holder records its attempt

Two service processes on one database could both record an attempt of the same event: the one whose lease
had run out still marked it failed (or delivered) after another process had taken it over. Each claim now
writes a fresh token, and an attempt is recorded only by the process that holds it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 22:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_token", sa.String(length=32), nullable=True))


def downgrade() -> None:
    op.drop_column("outbox", "lease_token")  # in place, as 0003 (SQLite 3.35+)
