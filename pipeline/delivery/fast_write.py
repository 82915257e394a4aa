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
        if "POSTCOMPILE" in self.sql:
            raise ValueError("a statement with expanding parameters cannot be prepared")
        binds = compiled.bind_names.items()
        # the values bound when the statement was built; a bindparam() without one must be given
        self.required = frozenset(name for bind, name in binds if bind.required)
        self.defaults = {name: value for name, value in compiled.params.items() if name not in self.required}
        # the dialect's own form of each type, as Core uses it (on SQLite: datetimes as its text format)
        self.processors = {name: bind.type.dialect_impl(dialect).bind_processor(dialect) for bind, name in binds}
        self.order = list(compiled.positiontup) if compiled.positional else None

    def params(self, values: dict):
        missing = self.required.difference(values)
        if missing:  # as Core would refuse it: never a silent NULL
            raise KeyError(f"a value is required for {', '.join(sorted(missing))}: {self.sql}")
        merged = self.defaults | values
        processed = {name: (proc(merged[name]) if proc is not None else merged[name])
                     for name, proc in self.processors.items() if name in merged}
        if self.order is not None:
            return tuple(processed[name] for name in self.order)
        return processed


class FastWriter:
    """The transactions a send run repeats per message and per batch, on a driver
    connection kept for the run (``statements``: see ``LedgerRun._fast_statements``).

    ``write``: the fence, the outcomes (many rows, one statement) and the rows marked
    ``sending`` (one statement, whose RETURNING names the rows that were still open).  ``claim``: the fence and one read of a batch's rows (still eligible, still
    open), and the rows no longer eligible marked skipped."""

    def __init__(self, engine: Engine, statements: dict):
        dialect = engine.dialect
        self.engine = engine
        self.fence = Prepared(statements["fence"], dialect) if statements["fence"] is not None else None
        self.outcome = Prepared(statements["outcome"], dialect)
        self.skip = Prepared(statements["skip"], dialect)
        self._sized = {"hand": statements["hand"], "check": statements["check"]}
        self._prepared: dict[tuple[str, int], Prepared] = {}  # (statement, number of rows)
        self.lost = statements["lost"]
        self._raw = None

    def _connection(self):
        if self._raw is None:
            self._raw = self.engine.raw_connection()  # checked by the pool's pre-ping
        return self._raw

    def _for(self, name: str, ids: list[int], values: dict | None = None) -> tuple["Prepared", object]:
        """The statement ``name`` for ``len(ids)`` rows (prepared once per size) and its parameters."""
        key = (name, len(ids))
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = self._prepared[key] = Prepared(self._sized[name](len(ids)), self.engine.dialect)
        return prepared, prepared.params({f"id{k}": i for k, i in enumerate(ids)} | (values or {}))

    def write(self, rows: list[dict], hand, now) -> set[int]:
        marked: set[int] = set()
        hand = list(hand)

        def work(run) -> None:  # may run twice (``_transaction``): it starts from nothing each time
            marked.clear()
            if rows:
                run(self.outcome, [self.outcome.params(row) for row in rows], many=True)
            if hand:
                marked.update(row[0] for row in run(*self._for("hand", hand, {"now": now})).fetchall())

        self._transaction(work)
        return marked

    def claim(self, ids: list[int], skipped: list[int], now) -> tuple[list[int], list[int]]:
        found: dict[int, tuple[int, int]] = {}
        given = list(skipped)
        skipped = []

        def work(run) -> None:  # may run twice (``_transaction``): it starts from nothing each time
            found.clear()
            skipped[:] = given
            if ids:
                cursor = run(*self._for("check", ids))
                found.update((row[0], (row[1], row[2])) for row in cursor.fetchall())
                skipped.extend(i for i in ids if not found.get(i, (0, 0))[0])
            if skipped:
                run(self.skip, [self.skip.params({"id": i, "now": now}) for i in skipped], many=True)

        self._transaction(work)
        return [i for i in ids if found.get(i) == (1, 1)], skipped

    def _transaction(self, work) -> None:
        """``work(run)`` inside one fenced transaction, committed; ``run(prepared, params,
        many=False)`` executes a statement and returns the cursor.

        The connection is held for the run, so the pool's pre-ping does not check it
        before each transaction as it checks Core's: when the server dropped it since
        the last one (a restart, a failover, an idle timeout), the first statement fails
        as a disconnect, nothing of the transaction has happened, and it runs once more
        on a fresh connection.  A disconnect during the commit is raised: whether the
        commit happened is not known, as with Core."""
        for attempt in (1, 2):
            committing = False
            raw = self._connection()
            cursor = raw.cursor()
            current: list = ["", None]

            def run(prepared: Prepared, params, many: bool = False):
                current[:] = [prepared.sql, params]
                if many:
                    cursor.executemany(prepared.sql, params)
                else:
                    cursor.execute(prepared.sql, params)
                return cursor

            try:
                if self.fence is not None and run(self.fence, self.fence.params({})).rowcount != 1:
                    raise LeaseLost(self.lost)
                work(run)
                committing = True
                raw.commit()
                return
            except LeaseLost:
                raw.rollback()
                raise
            except self.engine.dialect.loaded_dbapi.Error as exc:
                dropped = self._is_disconnect(exc, raw, cursor)
                self.close(broken=True)
                if dropped and not committing and attempt == 1:
                    continue
                raise DBAPIError.instance(current[0], current[1], exc, self.engine.dialect.loaded_dbapi.Error,
                                          dialect=self.engine.dialect,
                                          connection_invalidated=dropped) from exc
            except BaseException:
                self.close(broken=True)
                raise
            finally:
                try:
                    cursor.close()
                except Exception:  # the connection is already gone
                    pass

    def _is_disconnect(self, exc, raw, cursor) -> bool:
        try:
            return bool(self.engine.dialect.is_disconnect(exc, raw.dbapi_connection, cursor))
        except Exception:
            return False

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
