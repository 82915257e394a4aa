"""The send loop's hottest transaction, run on the database driver directly.

Every reply from the relay ends in one fenced transaction (``LedgerRun.write``):
the fence, the outcomes, and the next rows marked ``sending``.  Through
SQLAlchemy Core each statement costs about 100 µs of Python before the database
sees it, which made recording the send's largest cost (bench/README.md).  Here
the same statements, built with SQLAlchemy and compiled once for the engine's
dialect, run on one driver connection held for the send:

- the SQL text, the parameter order and each parameter's bind processor come
  from SQLAlchemy's compiler, so the values written are those Core would write
  (``AwareDateTime`` included), on SQLite and PostgreSQL alike;
- a driver error rolls the transaction back, drops the connection and is raised
  as SQLAlchemy's ``DBAPIError``, as a Core statement would raise it.

Writes that involve more than the ledger (a bounce suppresses its subscriber
through the ORM) keep the Core path: ``LedgerRun.write`` decides.
"""
from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from pipeline.errors import LeaseLost


class Prepared:
    """One statement compiled for a dialect: its SQL and a function from a dict of
    values (merged over the values bound when the statement was built) to the
    driver's parameters, each passed through its type's bind processor."""

    def __init__(self, statement, dialect):
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self.defaults = dict(compiled.params)
        types = {name: bind.type for bind, name in compiled.bind_names.items()}
        self.processors = {name: t.bind_processor(dialect) for name, t in types.items()}
        self.order = list(compiled.positiontup) if compiled.positional else None
        if "POSTCOMPILE" in self.sql:
            raise ValueError("a statement with expanding parameters cannot be prepared")

    def params(self, values: dict):
        merged = self.defaults | values
        processed = {name: (proc(merged[name]) if proc is not None else merged[name])
                     for name, proc in self.processors.items() if name in merged}
        if self.order is not None:
            return tuple(processed[name] for name in self.order)
        return processed


class FastWriter:
    """The fence, the outcomes (many rows, one statement) and the rows marked
    ``sending`` (one statement each, so each one's row count says whether it was still
    open), in one transaction on a driver connection kept for the run."""

    def __init__(self, engine: Engine, fence, outcome, hand, lost: str):
        dialect = engine.dialect
        self.engine = engine
        self.fence = Prepared(fence, dialect) if fence is not None else None
        self.outcome = Prepared(outcome, dialect)
        self.hand = Prepared(hand, dialect)
        self.lost = lost
        self._raw = None

    def _connection(self):
        if self._raw is None:
            self._raw = self.engine.raw_connection()
        return self._raw

    def write(self, rows: list[dict], hand, now) -> set[int]:
        raw = self._connection()
        cursor = raw.cursor()
        marked: set[int] = set()
        statement, params = "", None
        try:
            if self.fence is not None:
                statement, params = self.fence.sql, self.fence.params({})
                cursor.execute(statement, params)
                if cursor.rowcount != 1:
                    raise LeaseLost(self.lost)
            if rows:
                prepared = self.outcome
                statement, params = prepared.sql, [prepared.params(row) for row in rows]
                cursor.executemany(statement, params)
            for row_id in hand:
                statement, params = self.hand.sql, self.hand.params({"id": row_id, "now": now})
                cursor.execute(statement, params)
                if cursor.rowcount == 1:
                    marked.add(row_id)
            raw.commit()
        except LeaseLost:
            raw.rollback()
            raise
        except self.engine.dialect.loaded_dbapi.Error as exc:
            self.close(broken=True)
            raise DBAPIError.instance(statement, params, exc, self.engine.dialect.loaded_dbapi.Error,
                                      dialect=self.engine.dialect) from exc
        except BaseException:
            self.close(broken=True)
            raise
        finally:
            try:
                cursor.close()
            except Exception:  # the connection is already gone
                pass
        return marked

    def close(self, broken: bool = False) -> None:
        raw, self._raw = self._raw, None
        if raw is None:
            return
        try:
            if broken:
                raw.invalidate()
            else:
                raw.close()  # back to the pool (rolled back on return)
        except Exception:
            pass
