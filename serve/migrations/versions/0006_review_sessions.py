"""review_sessions: the review page's sign-ins, so that its cookie holds a session token instead of the API key

The cookie held the reviewer's API key itself: signing out only deleted the browser's copy (a copied cookie
stayed valid until the key was revoked) and the long-lived key sat in every browser that signed in. A session
row keeps only the SHA-256 of a random token; signing out deletes it, revoking its key deletes it, and it
expires after ``session_hours``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 13:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("review_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_review_sessions_key_id"), ["key_id"], unique=False)


def downgrade() -> None:
    op.drop_table("review_sessions")
