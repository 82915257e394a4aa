"""sign-up requests, one-time access links, shared rate limits, the transactional mail queue

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa

from pipeline.database import AwareDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signup_requests",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("consent_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("frequency", sa.String(8), nullable=False),
        sa.Column("topics", sa.Text, nullable=False),
        sa.Column("created_at", AwareDateTime(), nullable=False),
        sa.Column("confirmed_at", AwareDateTime()),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_signup_requests_subscriber_id", "signup_requests", ["subscriber_id"])
    op.create_table(
        "access_links",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", AwareDateTime(), nullable=False),
        sa.Column("expires_at", AwareDateTime(), nullable=False),
        sa.Column("used_at", AwareDateTime()),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_access_links_subscriber_id", "access_links", ["subscriber_id"])
    op.create_table(
        "rate_limits",
        sa.Column("key", sa.String(120), primary_key=True),
        sa.Column("window_start", AwareDateTime(), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("window_end", AwareDateTime(), nullable=False),
    )
    op.create_index("ix_rate_limits_window_end", "rate_limits", ["window_end"])
    op.create_table(
        "mail_queue",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.id", ondelete="CASCADE")),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("recipient", sa.String(320)),
        sa.Column("body", sa.LargeBinary),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_at", AwareDateTime(), nullable=False),
        sa.Column("claimed_by", sa.String(64)),
        sa.Column("claimed_at", AwareDateTime()),
        sa.Column("last_error", sa.Text),
        sa.Column("failed_at", AwareDateTime()),
        sa.Column("created_at", AwareDateTime(), nullable=False),
        sa.Column("sent_at", AwareDateTime()),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_mail_queue_due", "mail_queue", ["state", "next_at"])
    op.create_index("ix_mail_queue_subscriber_id", "mail_queue", ["subscriber_id"])


def downgrade() -> None:
    op.drop_table("mail_queue")
    op.drop_table("rate_limits")
    op.drop_table("access_links")
    op.drop_table("signup_requests")
