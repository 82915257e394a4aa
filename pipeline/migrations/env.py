"""Alembic environment: runs on the connection handed over by pipeline.database.migrate,
or on DATABASE_URL when alembic is run by hand."""
from __future__ import annotations

import os

from alembic import context

from pipeline.database import Base, engine_for

# import every model module so autogenerate sees all tables
import subscribers.models  # noqa: F401
import pipeline.delivery.ledger  # noqa: F401
import pipeline.scheduling.calendar  # noqa: F401
import pipeline.delivery.leases  # noqa: F401
import pipeline.corrections.records  # noqa: F401
import pipeline.bounces.models  # noqa: F401

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")

if connection is None:
    engine = engine_for(os.environ.get("DATABASE_URL", "sqlite:///var/newsletter.db"))
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
