"""Writes that meet other writers: retry a whole transaction on a conflict.

Several web processes (and several threads in each) write the same rows at the
same moment: fifty clicks on one confirmation link, two sign-ups for one new
address.  The unique constraints decide who wins; the loser's transaction fails
with an ``IntegrityError`` (PostgreSQL, SQLite), a deadlock or serialisation
failure (PostgreSQL), or "database is locked" (SQLite, when a read transaction
must become a write transaction after another writer committed: SQLite then
fails at once instead of waiting out ``busy_timeout``).  Running the whole
transaction again, a bounded number of times, lets it see the winner's rows and
do the idempotent thing.
"""
from __future__ import annotations

import random
import time
from typing import Callable, TypeVar

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

T = TypeVar("T")
ATTEMPTS = 12

_TRANSIENT = ("database is locked", "database table is locked", "deadlock detected",
              "could not serialize access", "could not obtain lock")


def is_conflict(exc: BaseException) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    if isinstance(exc, (OperationalError, DBAPIError)):
        text = str(getattr(exc, "orig", exc)).lower()
        return any(word in text for word in _TRANSIENT)
    return False


def retrying(write: Callable[[], T], attempts: int = ATTEMPTS) -> T:
    """``write()`` (one whole transaction), again after a conflict, with a short random pause."""
    for attempt in range(1, attempts + 1):
        try:
            return write()
        except (IntegrityError, OperationalError, DBAPIError) as exc:
            if attempt == attempts or not is_conflict(exc):
                raise
            time.sleep(random.uniform(0.002, 0.01 * attempt))
    raise AssertionError("unreachable")


def insert_ignore(session, table, values: dict, keys: list[str]) -> bool:
    """``INSERT ... ON CONFLICT (keys) DO NOTHING`` on SQLite or PostgreSQL; True if the row went in.

    A concurrent insert of the same key waits for the other transaction and then
    does nothing (PostgreSQL), instead of failing the whole transaction."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(dialect)
    # RETURNING rather than rowcount: psycopg does not report a row count here
    statement = insert(table).values(**values).on_conflict_do_nothing(index_elements=keys).returning(table.c[keys[0]])
    return session.execute(statement).first() is not None
