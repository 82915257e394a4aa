"""staff accounts, console sessions, the audit log, medical reviews

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa

from pipeline.database import AwareDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "staff",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("email_key", sa.String(320), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("credentials", sa.String(200), nullable=False, server_default=""),
        sa.Column("roles", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("failed_logins", sa.Integer, nullable=False, server_default="0"),
        sa.Column("locked_until", AwareDateTime()),
        sa.Column("disabled_at", AwareDateTime()),
        sa.Column("created_at", AwareDateTime(), nullable=False),
        sa.Column("password_changed_at", AwareDateTime(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "staff_sessions",
        sa.Column("id", sa.String(64), primary_key=True),  # SHA-256 of the cookie's random part
        sa.Column("staff_id", sa.Integer, sa.ForeignKey("staff.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", AwareDateTime(), nullable=False),
        sa.Column("last_seen", AwareDateTime(), nullable=False),
        sa.Column("revoked_at", AwareDateTime()),
        sa.Column("ip", sa.String(64)),
    )
    op.create_index("ix_staff_sessions_staff_id", "staff_sessions", ["staff_id"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", AwareDateTime(), nullable=False),
        sa.Column("actor", sa.String(320), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(400)),
        sa.Column("before", sa.Text),
        sa.Column("after", sa.Text),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("ip", sa.String(64)),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_actor", "audit_log", ["actor"])
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("slug", sa.String(200), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("staff_id", sa.Integer, sa.ForeignKey("staff.id"), nullable=False),
        sa.Column("reviewer_name", sa.String(200), nullable=False),
        sa.Column("reviewer_credentials", sa.String(200), nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("at", AwareDateTime(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_reviews_slug", "reviews", ["slug", "version"])


def downgrade() -> None:
    op.drop_table("reviews")
    op.drop_table("audit_log")
    op.drop_table("staff_sessions")
    op.drop_table("staff")
