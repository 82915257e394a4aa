"""bounces after the send: raw notifications, events, soft scores, releases, webhook nonces

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa

from pipeline.database import AwareDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bounce_raw",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("received_at", AwareDateTime(), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_bounce_raw_received_at", "bounce_raw", ["received_at"])
    op.create_table(
        "bounce_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("event_key", sa.String(200), nullable=False, unique=True),
        sa.Column("raw_id", sa.Integer, sa.ForeignKey("bounce_raw.id", ondelete="SET NULL")),
        sa.Column("received_at", AwareDateTime(), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("email", sa.String(320)),
        sa.Column("email_hash", sa.String(64)),
        sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.id", ondelete="SET NULL")),
        sa.Column("issue_id", sa.Integer, sa.ForeignKey("issues.id", ondelete="SET NULL")),
        sa.Column("delivery_id", sa.Integer),
        sa.Column("queue_id", sa.Integer),
        sa.Column("status", sa.String(16)),
        sa.Column("diagnostic", sa.Text),
        sa.Column("score", sa.Float),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_bounce_events_raw_id", "bounce_events", ["raw_id"])
    op.create_index("ix_bounce_events_received_at", "bounce_events", ["received_at"])
    op.create_index("ix_bounce_events_email_hash", "bounce_events", ["email_hash"])
    op.create_index("ix_bounce_events_subscriber_id", "bounce_events", ["subscriber_id"])
    op.create_index("ix_bounce_events_issue_kind", "bounce_events", ["issue_id", "kind"])
    op.create_table(
        "bounce_scores",
        sa.Column("email_hash", sa.String(64), primary_key=True),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("updated_at", AwareDateTime(), nullable=False),
    )
    op.create_table(
        "bounce_releases",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email_hash", sa.String(64), nullable=False),
        sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.id", ondelete="SET NULL")),
        sa.Column("released_by", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("previous", sa.String(32), nullable=False),
        sa.Column("at", AwareDateTime(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_bounce_releases_email_hash", "bounce_releases", ["email_hash"])
    op.create_table(
        "webhook_nonces",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("seen_at", AwareDateTime(), nullable=False),
    )
    op.create_index("ix_webhook_nonces_seen_at", "webhook_nonces", ["seen_at"])
    # a relay's webhook quotes our Message-ID: this finds its ledger row (and issue)
    op.create_index("ix_deliveries_message_id", "deliveries", ["message_id"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_message_id", "deliveries")
    for table in ("webhook_nonces", "bounce_releases", "bounce_scores", "bounce_events", "bounce_raw"):
        op.drop_table(table)
