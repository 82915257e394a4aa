"""several sender nodes share one send (issue 15)

Revision ID: 0011
Revises: 0010

- ``send_nodes``: one row per (issue, node) that joined the issue's send, with its
  own lease (``expires_at``, renewed by the node's heartbeat) and when and how it
  left.  A node's claims on ledger rows are valid while its row is live.
- ``deliveries.claimed_by``: the node that holds the row now (NULL when nobody
  does); ``deliveries.sent_by``: the node that recorded its latest outcome (who
  sent it, for the per-node counts of ``newsletter status``).
- ``issues.rate_next``: the shared rate limit's next free slot (seconds since the
  epoch), advanced a block at a time by every node of the send.
- an index on (issue_id, state, id) for the claim's ordered scan, and one on
  ``claimed_by`` for the rows a node holds.
"""
from alembic import op
import sqlalchemy as sa

from pipeline.database import AwareDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "send_nodes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("issue_id", sa.Integer, sa.ForeignKey("issues.id", ondelete="CASCADE"), nullable=False),
        sa.Column("node", sa.String(200), nullable=False),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("joined_at", AwareDateTime(), nullable=False),
        sa.Column("expires_at", AwareDateTime(), nullable=False),
        sa.Column("left_at", AwareDateTime()),
        sa.Column("ended", sa.String(16)),
        sa.UniqueConstraint("issue_id", "node", name="uq_send_nodes_issue_node"),
    )
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(200)))
        batch.add_column(sa.Column("sent_by", sa.String(200)))
    with op.batch_alter_table("issues") as batch:
        batch.add_column(sa.Column("rate_next", sa.Float()))
    op.create_index("ix_deliveries_issue_state_id", "deliveries", ["issue_id", "state", "id"])
    op.create_index("ix_deliveries_claimed_by", "deliveries", ["claimed_by"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_claimed_by", table_name="deliveries")
    op.drop_index("ix_deliveries_issue_state_id", table_name="deliveries")
    with op.batch_alter_table("issues") as batch:
        batch.drop_column("rate_next")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("sent_by")
        batch.drop_column("claimed_by")
    op.drop_table("send_nodes")
