"""issues and the deliveries ledger

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

from pipeline.database import AwareDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "issues",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("date", sa.Date, nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("subject", sa.String(998), nullable=False),
        sa.Column("articles", sa.Text, nullable=False),
        sa.Column("audience_topic", sa.String(64)),
        sa.Column("created_at", AwareDateTime(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("recipients", sa.Integer),
        sa.Column("lease_owner", sa.String(200)),
        sa.Column("lease_expires_at", AwareDateTime()),
        sa.Column("finished_at", AwareDateTime()),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("issue_id", sa.Integer, sa.ForeignKey("issues.id", ondelete="CASCADE"), nullable=False),
        sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.id", ondelete="SET NULL")),
        sa.Column("email", sa.String(320)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("uncertain", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", AwareDateTime()),
        sa.Column("last_reply", sa.String(500)),
        sa.Column("message_id", sa.String(255)),
        sa.Column("updated_at", AwareDateTime(), nullable=False),
        sa.UniqueConstraint("issue_id", "subscriber_id", name="uq_deliveries_issue_subscriber"),
    )
    op.create_index("ix_deliveries_issue_state", "deliveries", ["issue_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_issue_state", table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_table("issues")
