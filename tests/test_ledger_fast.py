"""The send's per-reply ledger writes on the driver connection (pipeline/delivery/fast_write.py)
and their group commit (pipeline/delivery/outcomes.py ``Recorder``), on real SQLite and
PostgreSQL: what they write equals what SQLAlchemy Core writes, a driver error is
SQLAlchemy's error and the next write still works, a lost lease writes nothing, and the
connections ready at the same moment share one transaction."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError

from fixtures_delivery import add_subscribers, small_rendered
from pipeline.database import open_database
from pipeline.delivery import ledger
from pipeline.delivery.outcomes import HOPS, Recorder
from pipeline.errors import LeaseLost

D = ledger.DELIVERIES


@pytest.fixture
def s(settings):
    return settings.replace(secret_key="fast-ledger-secret")


def sending_issue(engine, s, n: int) -> tuple[int, str]:
    add_subscribers(engine, s, n)
    rendered = small_rendered()
    iid = ledger.record_issue(engine, rendered.issue, rendered.subject).id
    owner = ledger.acquire_lease(engine, iid)
    ledger.write_recipients(engine, iid, "daily")
    return iid, owner


def started(url: str, s, n: int):
    """(engine, issue id, owner, its LedgerRun, the row ids) of an issue being sent to ``n`` subscribers."""
    engine = open_database(url)
    iid, owner = sending_issue(engine, s, n)
    return engine, iid, owner, ledger.LedgerRun(engine, iid, owner), sorted(rows(engine, iid))


def rows(engine, iid):
    with engine.connect() as conn:
        return {r.id: r for r in conn.execute(select(D).where(D.c.issue_id == iid).order_by(D.c.id))}


def outcome(row_id: int, state: str, retry_at=None, reply="250 2.0.0 Ok: queued as 7F3A’é", mid="<m@x>") -> dict:
    return {"row": row_id, "new_state": state, "tried": 1, "doubt": 0, "reply": reply, "mid": mid,
            "retry_at": retry_at}


def test_the_driver_path_writes_what_core_writes(store_url, s):
    """Two runs record the same outcomes, one through the driver path, one through
    Core (a bounce sends a write there); the stored rows are the same, times included."""
    engine, iid, owner, run, ids = started(store_url, s, 4)
    retry = datetime(2026, 3, 2, 7, 0, 1, 250000, tzinfo=timezone(timedelta(hours=5, minutes=30)))  # not UTC
    assert run.claim(ids, []) == (ids, [])
    assert run.write([], hand=ids) == set(ids)
    fast = [outcome(ids[0], ledger.SENT), outcome(ids[1], ledger.DEFERRED, retry_at=retry, reply="451 4.7.1 later")]
    assert run.write(fast, hand=[]) == set()
    assert run._fast is not None
    core = [outcome(ids[2], ledger.SENT), outcome(ids[3], ledger.DEFERRED, retry_at=retry, reply="451 4.7.1 later")]
    run.write(core, hand=[], bounced=[-1], settings=s)  # no such subscriber: the Core path, nothing suppressed
    stored = rows(engine, iid)
    for a, b in ((ids[0], ids[2]), (ids[1], ids[3])):
        x, y = stored[a], stored[b]
        assert (x.state, x.attempts, x.last_reply, x.message_id) == (y.state, y.attempts, y.last_reply, y.message_id)
        assert x.updated_at.tzinfo is not None and x.updated_at.utcoffset() == timedelta(0)
    assert stored[ids[1]].next_attempt_at == retry == stored[ids[3]].next_attempt_at
    assert stored[ids[1]].next_attempt_at.utcoffset() == timedelta(0)
    assert stored[ids[0]].last_reply == "250 2.0.0 Ok: queued as 7F3A’é"
    run.close()


def test_a_lost_lease_writes_nothing_and_a_driver_error_is_sqlalchemys(postgres_database, s):
    engine, iid, owner, run, ids = started(postgres_database, s, 3)
    assert run.write([], hand=ids[:1]) == {ids[0]}
    # a reply longer than the column: PostgreSQL refuses it; the transaction is rolled back
    with pytest.raises(DBAPIError):
        run.write([outcome(ids[0], ledger.SENT, reply="x" * 600)], hand=ids[1:2])
    assert rows(engine, iid)[ids[1]].state == ledger.QUEUED
    # the next write opens a fresh driver connection and works
    assert run.write([outcome(ids[0], ledger.SENT)], hand=ids[1:2]) == {ids[1]}
    with engine.begin() as conn:  # another process took the issue over
        conn.execute(update(ledger.ISSUES).where(ledger.ISSUES.c.id == iid).values(lease_owner="elsewhere:1"))
    with pytest.raises(LeaseLost):
        run.write([outcome(ids[1], ledger.SENT)], hand=ids[2:])
    after = rows(engine, iid)
    assert after[ids[1]].state == ledger.SENDING and after[ids[2]].state == ledger.QUEUED
    run.close()


def test_connections_ready_together_share_one_commit(db_url, s):
    engine, iid, owner, run, ids = started(db_url, s, 8)
    recorder = Recorder(run, s, expected=lambda: 8)

    async def all_at_once():
        return await asyncio.gather(*(recorder.commit([], hand=[i]) for i in ids))

    marked = asyncio.run(all_at_once())
    assert marked == [{i} for i in ids]  # each connection learns its own row, and only it
    assert recorder.commits == 1
    assert ledger.state_counts(engine, iid)[ledger.SENDING] == 8
    run.close()


def test_a_group_does_not_wait_for_a_connection_whose_reply_is_late(db_url, s):
    """Eight connections are expected, one hands over: its write goes after a few
    turns of the loop, never waiting for the seven (their replies may take seconds)."""
    engine, iid, owner, run, ids = started(db_url, s, 2)
    recorder = Recorder(run, s, expected=lambda: 8)
    turns = []

    async def one_alone():
        loop = asyncio.get_running_loop()

        def count(n=0):
            turns.append(n)
            if n < 50:
                loop.call_soon(count, n + 1)
        loop.call_soon(count)
        first = await recorder.commit([], hand=[ids[0]])
        seen = len(turns)
        second = await recorder.commit([], hand=[ids[1]])
        return first, second, seen

    first, second, seen = asyncio.run(one_alone())
    assert (first, second) == ({ids[0]}, {ids[1]})
    assert recorder.commits == 2
    assert seen <= HOPS + 2  # a few turns, not the other seven connections
    run.close()


def test_sqlite_stores_the_same_text_as_core_on_a_whole_second(db_url, s, monkeypatch):
    """Review: the driver path passed datetimes to sqlite3 without SQLite's own format, so a
    whole second was stored as '07:00:00', not Core's '07:00:00.000000' (text comparisons
    of two equal instants then disagree)."""
    from sqlalchemy import text
    from pipeline import clock

    engine, iid, owner, run, ids = started(db_url, s, 2)
    at = datetime(2026, 3, 2, 7, 0, 0, tzinfo=timezone.utc)
    monkeypatch.setattr(clock, "now", lambda: at)
    run.write([outcome(ids[0], ledger.DEFERRED, retry_at=at)], hand=[])  # driver path
    run.write([outcome(ids[1], ledger.DEFERRED, retry_at=at)], hand=[], bounced=[-1], settings=s)  # Core
    run.close()
    with engine.connect() as conn:
        raw = {r[0]: (r[1], r[2]) for r in conn.execute(text(
            "SELECT id, updated_at, next_attempt_at FROM deliveries WHERE id IN (:a, :b)"), {"a": ids[0], "b": ids[1]})}
    assert raw[ids[0]] == raw[ids[1]] == ("2026-03-02 07:00:00.000000", "2026-03-02 07:00:00.000000")


def test_a_missing_value_is_refused_not_written_as_null(db_url, s):
    engine, iid, owner, run, (only,) = started(db_url, s, 1)
    incomplete = outcome(only, ledger.DEFERRED)
    del incomplete["retry_at"]
    with pytest.raises(KeyError, match="retry_at"):
        run.write([incomplete], hand=[])
    assert rows(engine, iid)[only].state == ledger.QUEUED
    run.close()


def terminate_backends(url) -> None:
    """Every other connection to the test database, cut by the server (a restart, a failover)."""
    import psycopg
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname="postgres", autocommit=True) as c:
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                  (url.database,))


def test_a_connection_the_server_dropped_between_writes_is_replaced(postgres_database, s):
    """Review: Core's checkout pings (pool_pre_ping) and reconnects; the connection held for
    the send was used unchecked, so the next write failed after a restart or an idle timeout."""
    engine, iid, owner, run, ids = started(postgres_database, s, 3)
    assert run.claim(ids, []) == (ids, [])
    assert run.write([], hand=ids[:1]) == {ids[0]}
    terminate_backends(engine.url)
    assert run.write([outcome(ids[0], ledger.SENT)], hand=ids[1:2]) == {ids[1]}
    terminate_backends(engine.url)
    assert run.claim(ids[2:], []) == (ids[2:], [])
    states = {i: r.state for i, r in rows(engine, iid).items()}
    assert states == {ids[0]: ledger.SENT, ids[1]: ledger.SENDING, ids[2]: ledger.QUEUED}
    run.close()


def test_a_database_restart_mid_send_neither_fails_the_send_nor_mails_anyone_twice(postgres_database, settings):
    """Review: PostgreSQL restarts while the relay holds the first message, and the relay says
    250.  The send goes on, and each subscriber is mailed exactly once."""
    from aiosmtpd.controller import Controller
    from conftest import free_port
    from pipeline.delivery.deliver import send_issue

    s = settings.replace(secret_key="fast-ledger-secret")
    engine = open_database(postgres_database)
    add_subscribers(engine, s, 3)
    received: list[str] = []

    class Relay:
        async def handle_DATA(self, _server, _session, envelope):
            if not received:
                await asyncio.to_thread(terminate_backends, engine.url)
            received.append(envelope.rcpt_tos[0])
            return "250 OK"

    port = free_port()
    controller = Controller(Relay(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        smtp = s.replace(transport="smtp", smtp_host="127.0.0.1", smtp_port=port, smtp_timeout=5.0,
                         smtp_retry_delay=0.05, smtp_connections=1, delivery_batch_size=4)
        summary = send_issue(engine, smtp, small_rendered(), progress=False)
    finally:
        controller.stop()
    assert (summary.state, summary.sent, summary.error) == ("sent", 3, "")
    assert len(received) == 3 == len(set(received))


def test_rows_a_node_kept_when_it_left_are_taken_back(postgres_database, s):
    """Review: a node whose run ended in an error between a row's mark and its outcome left
    the send with that row still claimed and ``sending``; nothing ever took it back, and a
    resumed send waited for it forever."""
    from pipeline.delivery import claims

    engine = open_database(postgres_database)
    add_subscribers(engine, s, 6)
    rendered = small_rendered()
    iid = ledger.record_issue(engine, rendered.issue, rendered.subject).id
    ledger.write_recipients(engine, iid, "daily")
    node, other = "otherhost:7:x:aaaa", "otherhost:8:x:bbbb"
    claims.join(engine, iid, node, 60)
    claims.join(engine, iid, other, 60)
    run = claims.SharedLedgerRun(engine, iid, node)
    taken, _ = run.claim_batch(ledger.QUEUED, 4, 3)
    assert run.write([], hand=[taken[0].id]) == {taken[0].id}
    run.close()
    claims.leave(engine, iid, node)  # the error path: the node leaves, its mark still open
    assert claims.held_by_others(engine, iid, other) == 1
    assert claims.reap(engine, iid, "resend") == 1
    assert claims.held_by_others(engine, iid, other) == 0
    row = rows(engine, iid)[taken[0].id]
    assert (row.state, row.uncertain, row.claimed_by) == (ledger.DEFERRED, 1, None)
    assert claims.reap(engine, iid, "resend") == 0  # once


def test_a_database_failure_is_one_line_and_exit_1(monkeypatch, capsys):
    from sqlalchemy.exc import OperationalError
    import pipeline.cli as cli_module

    class Shutdown(Exception):
        pass

    def failing(**_kw):
        raise OperationalError("UPDATE deliveries ...", {}, Shutdown("terminating connection due to administrator "
                                                                     "command\nSSL connection has been closed"))
    monkeypatch.setattr(cli_module.cli, "main", failing)
    with pytest.raises(SystemExit) as exited:
        cli_module.main(["send"])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: the database failed (Shutdown: terminating connection due to administrator command)")
