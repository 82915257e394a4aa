"""editorial calendar, runs, pause, leases, daemon heartbeats

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa

from pipeline.database import AwareDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # APScheduler 3's job store table, with the columns SQLAlchemyJobStore declares.
    # It is created here, not by each daemon on start, because two daemons starting
    # together both ran CREATE TABLE and one of them died of "already exists".
    op.create_table(
        "apscheduler_jobs",
        sa.Column("id", sa.Unicode(191), primary_key=True),
        sa.Column("next_run_time", sa.Float(25)),
        sa.Column("job_state", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_apscheduler_jobs_next_run_time", "apscheduler_jobs", ["next_run_time"])
    op.create_table(
        "calendar_entries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("slug", sa.String(200), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("at", sa.String(5)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("issue_key", sa.String(64)),
        sa.Column("created_at", AwareDateTime(), nullable=False),
        sa.Column("updated_at", AwareDateTime(), nullable=False),
    )
    op.create_index("ix_calendar_entries_slug", "calendar_entries", ["slug"])
    op.create_index("ix_calendar_entries_day", "calendar_entries", ["day"])
    # an article is on the calendar at most once at a time: a partial unique index
    # (SQLite and PostgreSQL both have them)
    op.create_index("uq_calendar_entries_scheduled_slug", "calendar_entries", ["slug"], unique=True,
                    sqlite_where=sa.text("state = 'scheduled'"), postgresql_where=sa.text("state = 'scheduled'"))
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("issue_key", sa.String(64)),
        sa.Column("planned_at", AwareDateTime()),
        sa.Column("started_at", AwareDateTime()),
        sa.Column("finished_at", AwareDateTime()),
        sa.Column("holder", sa.String(200)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("sent", sa.Integer, nullable=False, server_default="0"),
        sa.Column("deferred", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("bounced", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),
        # exactly once per (day, kind): whichever daemon inserts first owns the day
        sa.UniqueConstraint("day", "kind", name="uq_runs_day_kind"),
    )
    op.create_table(
        "schedule_pause",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("until", sa.Date),
        sa.Column("changed_at", AwareDateTime(), nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("expires_at", AwareDateTime(), nullable=False),
    )
    op.create_table(
        "heartbeats",
        sa.Column("holder", sa.String(200), primary_key=True),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("started_at", AwareDateTime(), nullable=False),
        sa.Column("last_seen", AwareDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_index("ix_apscheduler_jobs_next_run_time", table_name="apscheduler_jobs")
    op.drop_table("apscheduler_jobs")
    op.drop_table("heartbeats")
    op.drop_table("leases")
    op.drop_table("schedule_pause")
    op.drop_table("runs")
    op.drop_index("uq_calendar_entries_scheduled_slug", table_name="calendar_entries")
    op.drop_index("ix_calendar_entries_day", table_name="calendar_entries")
    op.drop_index("ix_calendar_entries_slug", table_name="calendar_entries")
    op.drop_table("calendar_entries")
