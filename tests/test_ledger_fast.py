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


def rows(engine, iid):
    with engine.connect() as conn:
        return {r.id: r for r in conn.execute(select(D).where(D.c.issue_id == iid).order_by(D.c.id))}


def outcome(row_id: int, state: str, retry_at=None, reply="250 2.0.0 Ok: queued as 7F3A’é", mid="<m@x>") -> dict:
    return {"row": row_id, "new_state": state, "tried": 1, "doubt": 0, "reply": reply, "mid": mid,
            "retry_at": retry_at}


def test_the_driver_path_writes_what_core_writes(store_url, s):
    """Two runs record the same outcomes, one through the driver path, one through
    Core (a bounce sends a write there); the stored rows are the same, times included."""
    engine = open_database(store_url)
    iid, owner = sending_issue(engine, s, 4)
    run = ledger.LedgerRun(engine, iid, owner)
    ids = sorted(rows(engine, iid))
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
    engine = open_database(postgres_database)
    iid, owner = sending_issue(engine, s, 3)
    run = ledger.LedgerRun(engine, iid, owner)
    ids = sorted(rows(engine, iid))
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
    engine = open_database(db_url)
    iid, owner = sending_issue(engine, s, 8)
    run = ledger.LedgerRun(engine, iid, owner)
    ids = sorted(rows(engine, iid))
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
    engine = open_database(db_url)
    iid, owner = sending_issue(engine, s, 2)
    run = ledger.LedgerRun(engine, iid, owner)
    ids = sorted(rows(engine, iid))
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
