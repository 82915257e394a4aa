"""each subscriber's own time zone and delivery hour (issue 15: delivery at local time)

Revision ID: 0007
Revises: 0006

Both columns are nullable, and NULL means "as the editors": ``time_zone`` NULL is
``settings.timezone``, ``delivery_hour`` NULL is ``settings.send_time``.  Existing
subscribers therefore keep exactly today's send time.
"""
from alembic import op
import sqlalchemy as sa

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.add_column(sa.Column("time_zone", sa.String(64)))  # an IANA name, e.g. Asia/Kolkata
        batch.add_column(sa.Column("delivery_hour", sa.Integer))  # 0..23, local to time_zone


def downgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("delivery_hour")
        batch.drop_column("time_zone")
