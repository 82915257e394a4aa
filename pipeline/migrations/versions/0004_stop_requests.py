"""stop requests, run acknowledgements; the shared APScheduler job store goes

Revision ID: 0004
Revises: 0003

Each daemon now keeps its scheduler's jobs in memory, rebuilt from the calendar by
its reconcile job, so the ``apscheduler_jobs`` table of 0003 is dropped.
"""
from alembic import op
import sqlalchemy as sa

from pipeline.database import AwareDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stop_requests",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("day", sa.Date),  # NULL: every send running when it was made (pause)
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),  # stop, pause, signal
        sa.Column("requested_at", AwareDateTime(), nullable=False),
        sa.Column("honoured_at", AwareDateTime()),
        sa.Column("issue_key", sa.String(64)),
        sa.Column("sent", sa.Integer),
        sa.Column("total", sa.Integer),
        sa.Column("released_at", AwareDateTime()),
    )
    op.create_index("ix_stop_requests_open", "stop_requests", ["released_at", "day"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("acknowledged_at", AwareDateTime()))
    op.drop_index("ix_apscheduler_jobs_next_run_time", table_name="apscheduler_jobs")
    op.drop_table("apscheduler_jobs")


def downgrade() -> None:
    op.create_table(
        "apscheduler_jobs",
        sa.Column("id", sa.Unicode(191), primary_key=True),
        sa.Column("next_run_time", sa.Float(25)),
        sa.Column("job_state", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_apscheduler_jobs_next_run_time", "apscheduler_jobs", ["next_run_time"])
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("acknowledged_at")
    op.drop_index("ix_stop_requests_open", table_name="stop_requests")
    op.drop_table("stop_requests")
