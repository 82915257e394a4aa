"""drop ix_deliveries_issue_state: ix_deliveries_issue_state_id covers it (issue 14)

Revision ID: 0012
Revises: 0011

``(issue_id, state)`` is a leading prefix of ``ix_deliveries_issue_state_id``
``(issue_id, state, id)``, so every query the two-column index served, the three-column
one serves as well, on SQLite and PostgreSQL alike.  But every change of a row's state
(each message is written twice: ``sending``, then its outcome) moved an entry in both,
and on SQLite the second index was about 40% of what each ledger commit wrote (a
micro-benchmark of a four-message group commit: 132 µs with it, 79 µs without).
"""
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_deliveries_issue_state", table_name="deliveries")


def downgrade() -> None:
    op.create_index("ix_deliveries_issue_state", "deliveries", ["issue_id", "state"])
