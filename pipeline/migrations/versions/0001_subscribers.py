"""subscribers, topics, consent records, suppressions

Revision ID: 0001
Revises:
"""
from alembic import op
import sqlalchemy as sa

from pipeline.database import AwareDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subscribers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("email_key", sa.String(320), nullable=False, unique=True),
        sa.Column("email_hash", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("frequency", sa.String(8), nullable=False),
        sa.Column("created_at", AwareDateTime(), nullable=False),
        sa.Column("updated_at", AwareDateTime(), nullable=False),
        sa.Column("pending_at", AwareDateTime()),
        sa.Column("confirmed_at", AwareDateTime()),
        sa.Column("unsubscribed_at", AwareDateTime()),
        sa.Column("bounced_at", AwareDateTime()),
        sa.Column("complained_at", AwareDateTime()),
        sa.Column("confirm_sent_at", AwareDateTime()),
        # ids are never reused (SQLite would, without AUTOINCREMENT): old links carry them
        sqlite_autoincrement=True,
    )
    op.create_index("ix_subscribers_status", "subscribers", ["status"])
    op.create_index("ix_subscribers_email_hash", "subscribers", ["email_hash"])
    op.create_index("ix_subscribers_sending", "subscribers", ["status", "frequency", "id"])
    op.create_table(
        "subscriber_topics",
        sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("topic", sa.String(64), primary_key=True),
    )
    op.create_index("ix_subscriber_topics_topic", "subscriber_topics", ["topic"])
    op.create_table(
        "consent_records",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.id", ondelete="SET NULL")),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("ip", sa.String(64)),
        sa.Column("wording", sa.Text),
        sa.Column("wording_version", sa.String(64)),
        sa.Column("detail", sa.Text),
        sa.Column("at", AwareDateTime(), nullable=False),
    )
    op.create_index("ix_consent_records_subscriber_id", "consent_records", ["subscriber_id"])
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("at", AwareDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("suppressions")
    op.drop_table("consent_records")
    op.drop_table("subscriber_topics")
    op.drop_table("subscribers")
