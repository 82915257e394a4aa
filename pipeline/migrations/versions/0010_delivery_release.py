"""each ledger row's release instant (issue 15: waves at each reader's local time)

Revision ID: 0010
Revises: 0009

``deliveries.release_at`` is the UTC instant from which a row may be sent: the
release of its recipient's (time zone, delivery hour) group, written with the
ledger (``pipeline.scheduling.waves``).  NULL means "as soon as the send runs",
which is what every row written before this migration, and every hand send
without waves, keeps meaning.
"""
from alembic import op
import sqlalchemy as sa

from pipeline.database import AwareDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("release_at", AwareDateTime()))
    op.create_index("ix_deliveries_issue_release", "deliveries", ["issue_id", "release_at"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_issue_release", table_name="deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("release_at")
