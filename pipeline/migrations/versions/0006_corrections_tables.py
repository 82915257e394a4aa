"""corrections and retractions, and the versions of each article that went out

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa

from pipeline.database import AwareDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "corrections",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("slug", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("significant", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("before_hash", sa.String(64)),
        sa.Column("after_hash", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", AwareDateTime(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_corrections_slug", "corrections", ["slug", "id"])
    # one retraction per article, even when two editors retract at the same moment
    op.create_index("uq_corrections_one_retraction", "corrections", ["slug"], unique=True,
                    sqlite_where=sa.text("kind = 'retraction'"), postgresql_where=sa.text("kind = 'retraction'"))
    op.create_table(
        "article_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("slug", sa.String(200), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("recorded_at", AwareDateTime(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_article_versions_slug", "article_versions", ["slug", "id"])


def downgrade() -> None:
    op.drop_index("ix_article_versions_slug", table_name="article_versions")
    op.drop_table("article_versions")
    op.drop_index("uq_corrections_one_retraction", table_name="corrections")
    op.drop_index("ix_corrections_slug", table_name="corrections")
    op.drop_table("corrections")
