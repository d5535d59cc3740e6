"""cases.version: lifecycle actions so far, so that an action decided on a stale page is refused

Two reviewers with the same case open: the second one's dispatch (or relabel) used to replace the first
one's without a word. An action may now name the version it was decided on; cases filed before get the
number of lifecycle actions in their history. The downgrade drops the column in place (SQLite 3.35+).

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


#: The lifecycle actions (serve.lifecycle.TRANSITIONS when this revision was written): what a version counts.
ACTIONS = ("confirm", "dismiss", "relabel", "dispatch", "resolve", "close", "reopen")


def upgrade() -> None:
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), server_default="0", nullable=False))
    # cases filed before: the actions their history holds, so a version means the same for every case
    history = sa.table("history", sa.column("case_id", sa.Integer), sa.column("action", sa.String))
    cases = sa.table("cases", sa.column("id", sa.Integer), sa.column("version", sa.Integer))
    taken = (
        sa.select(sa.func.count())
        .select_from(history)
        .where(history.c.case_id == cases.c.id, history.c.action.in_(ACTIONS))
        .scalar_subquery()
    )
    op.execute(cases.update().values(version=taken))


def downgrade() -> None:
    # in place (SQLite 3.35+ drops a column itself): batch mode would copy the table, and dropping the old
    # copy fails on the evidence and history rows that refer to it
    op.drop_column("cases", "version")
