"""The database: one SQLAlchemy engine per URL, the declarative base, migrations.

SQLite (``var/newsletter.db``) by default; PostgreSQL when ``DATABASE_URL`` says
so, with no code change.  The schema is owned by Alembic migrations in
``pipeline/migrations``; ``open_database`` brings a database up to date.
"""
from __future__ import annotations

from contextlib import contextmanager
from datetime import timezone
from pathlib import Path
from typing import Iterator

from sqlalchemy import DateTime, Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from pipeline.errors import DatabaseError, SchemaError

MIGRATIONS = Path(__file__).parent / "migrations"


class AwareDateTime(TypeDecorator):
    """A timestamp that is always timezone-aware UTC in Python.

    SQLite has no time zone type, so values are stored as UTC and given their
    zone back on the way out.  Naive values are refused on the way in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r} cannot be stored; use pipeline.clock.now()")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (the web service) never block the sender
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


_engines: dict[str, Engine] = {}


def engine_for(url: str) -> Engine:
    """One engine per URL per process. A SQLite file's folder is created if missing."""
    if url not in _engines:
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        if url.startswith("postgresql://"):
            url_for_driver = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        else:
            url_for_driver = url
        engine = create_engine(url_for_driver, future=True, pool_pre_ping=True)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        _engines[url] = engine
    return _engines[url]


def migrate(engine: Engine) -> None:
    """Bring the schema up to the newest migration.

    Several processes may start at once (nodes of one deployment, ``serve`` beside
    ``run``): one migrates while the others wait, then find nothing to do. On
    PostgreSQL the migration transaction holds an advisory lock; SQLite (one machine)
    uses a lock file beside the database. A database already migrated past this
    code's newest revision (a newer release ran it) is refused with one line rather
    than half-understood.
    """
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    known = {rev.revision for rev in ScriptDirectory.from_config(config).walk_revisions()}
    with _migration_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        current = set(MigrationContext.configure(connection).get_current_heads())
        unknown = sorted(current - known)
        if unknown:
            raise SchemaError(f"the database is at migration {', '.join(unknown)}, which this release does not "
                              "know: a newer release has migrated it; upgrade this node to that release")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


MIGRATION_LOCK_KEY = 0x6E6C6D67  # "nlmg": the advisory lock all nodes take to migrate


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """For a SQLite file: an exclusive lock on ``<database>.migrate.lock`` while migrating."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    import fcntl

    with open(f"{database}.migrate.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_migrated: set[str] = set()


def open_database(url: str) -> Engine:
    """The engine for ``url``, migrated to the newest schema (once per process)."""
    engine = engine_for(url)
    if url not in _migrated:
        from sqlalchemy.exc import OperationalError

        try:
            migrate(engine)
        except OperationalError as exc:  # unreachable server, refused login, unreadable file
            reason = str(exc.orig if getattr(exc, "orig", None) else exc).strip().splitlines()[0]
            raise DatabaseError(f"cannot open the database {engine.url.render_as_string(hide_password=True)}: "
                                f"{reason}") from None
        _migrated.add(url)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False, future=True)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with session_factory(engine).begin() as session:
        yield session


def dispose_all() -> None:
    """Close every engine (tests, and forked processes)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _migrated.clear()
