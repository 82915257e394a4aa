"""The send ledger on a real SQLite file: who is a recipient, written once,
in-flight rows after a crash, and the one-sender lease."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from fixtures_delivery import add_subscribers, small_rendered
from pipeline import clock
from pipeline.delivery import ledger
from pipeline.database import open_database
from pipeline.errors import DeliveryError


@pytest.fixture
def engine(db_url):
    return open_database(db_url)


@pytest.fixture
def s(settings):
    return settings.replace(secret_key="ledger-test-secret")


def issue_id(engine) -> int:
    rendered = small_rendered()
    return ledger.record_issue(engine, rendered.issue, rendered.subject).id


def ledger_subscribers(engine, iid) -> set[int]:
    with engine.connect() as conn:
        return {r.subscriber_id for r in conn.execute(select(ledger.DELIVERIES.c.subscriber_id)
                                                       .where(ledger.DELIVERIES.c.issue_id == iid))}


def test_recipients_are_confirmed_unsuppressed_subscribers_of_the_frequency(engine, s):
    from subscribers import store

    confirmed = add_subscribers(engine, s, 5, start=0)
    pending = add_subscribers(engine, s, 2, start=10, status="pending")
    unsubscribed = add_subscribers(engine, s, 2, start=20, status="unsubscribed")
    bounced = add_subscribers(engine, s, 2, start=30, status="bounced")
    weekly = add_subscribers(engine, s, 2, start=40, frequency="weekly")
    # confirmed in the table, but the address is on the suppression list (e.g. a complaint
    # about an address that later signed up again without confirming the way back)
    suppressed = add_subscribers(engine, s, 1, start=50)
    from subscribers.models import Suppression
    from subscribers.tokens import email_hash
    with engine.begin() as conn:
        conn.execute(insert(Suppression.__table__).values(email_hash=email_hash(s, "sub50@example.com"),
                                                          reason="complained", at=clock.now()))
    iid = issue_id(engine)
    assert ledger.count_recipients(engine, "daily") == 5
    assert ledger.write_recipients(engine, iid, "daily") == 5
    got = ledger_subscribers(engine, iid)
    assert got == set(confirmed)
    assert not got & set(pending + unsubscribed + bounced + weekly + suppressed)
    assert ledger.state_counts(engine, iid)["queued"] == 5
    assert ledger.find_issue(engine, "2026-03-02").state == "queued"
    assert store.get(engine, confirmed[0]) is not None


def test_topic_and_frequency_filters(engine, s):
    hair = add_subscribers(engine, s, 3, start=0, topics=("hair-loss",))
    skin = add_subscribers(engine, s, 2, start=10, topics=("skin-care", "wellbeing"))
    add_subscribers(engine, s, 2, start=20, frequency="weekly", topics=("hair-loss",))
    assert ledger.count_recipients(engine, "daily", "hair-loss") == 3
    assert ledger.count_recipients(engine, "weekly", "hair-loss") == 2
    assert ledger.count_recipients(engine, "daily") == 5
    iid = issue_id(engine)
    ledger.write_recipients(engine, iid, "daily", "skin-care")
    assert ledger_subscribers(engine, iid) == set(skin)
    assert not ledger_subscribers(engine, iid) & set(hair)


def test_an_issue_goes_to_subscribers_of_its_articles_topics_and_to_those_who_chose_none(engine, s):
    hair = add_subscribers(engine, s, 3, start=0, topics=("hair-loss",))
    skin = add_subscribers(engine, s, 2, start=10, topics=("skin-care", "wellbeing"))
    everything = add_subscribers(engine, s, 2, start=20)  # no topic chosen: every article
    wellbeing_only = add_subscribers(engine, s, 1, start=30, topics=("wellbeing",))
    assert ledger.count_recipients(engine, "daily", topics=("skin-care",)) == 4
    assert ledger.count_recipients(engine, "daily", topics=("hair-loss", "wellbeing")) == 8
    iid = issue_id(engine)
    ledger.write_recipients(engine, iid, "daily", topics=("skin-care",))
    assert ledger_subscribers(engine, iid) == set(skin + everything)
    assert not ledger_subscribers(engine, iid) & set(hair + wellbeing_only)


def test_recipients_are_written_once_per_issue(engine, s):
    add_subscribers(engine, s, 4)
    iid = issue_id(engine)
    assert ledger.write_recipients(engine, iid, "daily") == 4
    add_subscribers(engine, s, 3, start=100)  # confirmed after the ledger was written
    assert ledger.write_recipients(engine, iid, "daily") is None
    assert sum(ledger.state_counts(engine, iid).values()) == 4
    with pytest.raises(IntegrityError):  # one row per (issue, subscriber), enforced by the schema
        with engine.begin() as conn:
            sid = next(iter(ledger_subscribers(engine, iid)))
            conn.execute(insert(ledger.DELIVERIES).values(issue_id=iid, subscriber_id=sid, email="x@example.com",
                                                          state="queued", updated_at=clock.now()))


def test_record_issue_returns_the_first_composition(engine):
    first = small_rendered(subject="First")
    again = small_rendered(subject="Second")
    a = ledger.record_issue(engine, first.issue, first.subject)
    b = ledger.record_issue(engine, again.issue, again.subject)
    assert a.id == b.id and b.subject == "First"
    assert ledger.issue_count(engine) == 1


@pytest.mark.parametrize("policy,state", [("skip", "uncertain"), ("resend", "deferred")])
def test_rows_left_sending_become_uncertain(engine, s, policy, state):
    add_subscribers(engine, s, 6)
    iid = issue_id(engine)
    ledger.write_recipients(engine, iid, "daily")
    with engine.begin() as conn:  # a crash after three rows were marked sending
        ids = [r.id for r in conn.execute(select(ledger.DELIVERIES.c.id).limit(3))]
        conn.execute(update(ledger.DELIVERIES).where(ledger.DELIVERIES.c.id.in_(ids)).values(state="sending"))
    assert ledger.recover_in_flight(engine, iid, policy) == 3
    counts = ledger.state_counts(engine, iid)
    assert counts[state] == 3 and counts["sending"] == 0 and counts["queued"] == 3
    with engine.connect() as conn:
        marks = conn.execute(select(ledger.DELIVERIES.c.uncertain).where(ledger.DELIVERIES.c.id.in_(ids))).scalars()
        assert list(marks) == [1, 1, 1]
    assert ledger.recover_in_flight(engine, iid, policy) == 0
    with pytest.raises(DeliveryError, match="uncertain_policy"):
        ledger.recover_in_flight(engine, iid, "maybe")


def test_lease_keeps_a_second_sender_out_and_passes_from_a_dead_one(engine):
    iid = issue_id(engine)
    with engine.begin() as conn:  # held by a live process elsewhere
        conn.execute(update(ledger.ISSUES).values(lease_owner="otherhost:1",
                                                  lease_expires_at=clock.now() + timedelta(seconds=60)))
    with pytest.raises(DeliveryError, match="being sent by otherhost:1"):
        ledger.acquire_lease(engine, iid)
    # held by a process on this host that has died: taken at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket
    with engine.begin() as conn:
        conn.execute(update(ledger.ISSUES).values(lease_owner=f"{socket.gethostname()}:{dead.pid}"))
    owner = ledger.acquire_lease(engine, iid)
    # a holder name unique to this acquisition: host, pid, process start time, random part
    assert owner.split(":")[:2] == [socket.gethostname(), str(os.getpid())] and len(owner.split(":")) == 4
    ledger.release_lease(engine, iid, owner)
    with engine.connect() as conn:
        assert conn.execute(select(ledger.ISSUES.c.lease_owner)).scalar_one() is None


def test_a_row_claimed_by_another_run_is_not_claimed_again(engine, s):
    # Two runs that read the same page (a second sender that got in while the first
    # was alive) must not both send a row: only the run whose hand-over moved it from
    # queued to sending may send it.  Claiming a batch marks nothing: a row becomes
    # sending one message at a time, as its content goes out.
    add_subscribers(engine, s, 4)
    iid = issue_id(engine)
    ledger.write_recipients(engine, iid, "daily")
    # the row-level rule alone, without the lease fence (which would stop the second run first)
    first = ledger.LedgerRun(engine, iid, "host-a:1", fenced=False)
    second = ledger.LedgerRun(engine, iid, "host-b:2", fenced=False)
    page_a = first.page(ledger.QUEUED, 0, 10, 5)
    page_b = second.page(ledger.QUEUED, 0, 10, 5)
    ids = [r.id for r in page_a]
    assert ids == [r.id for r in page_b] and len(ids) == 4
    assert first.claim(ids, []) == (ids, [])
    assert ledger.state_counts(engine, iid)["sending"] == 0
    assert first.write([], hand=ids[:1]) == {ids[0]}
    assert second.claim(ids, []) == (ids[1:], [])
    assert second.write([], hand=ids[:2]) == {ids[1]}  # the first row is the first run's
    assert ledger.state_counts(engine, iid)["sending"] == 2


def test_renewing_never_takes_back_a_lease_another_process_took_over(engine, s, monkeypatch):
    iid = issue_id(engine)
    owner = ledger.acquire_lease(engine, iid)
    run = ledger.LedgerRun(engine, iid, owner)
    with engine.begin() as conn:  # the lease expired and another sender took it over
        conn.execute(update(ledger.ISSUES).values(lease_owner="otherhost:1",
                                                  lease_expires_at=clock.now() + timedelta(seconds=60)))
    monkeypatch.setattr(run, "_renewed", clock.monotonic() - ledger.LEASE_SECONDS)  # renewal is due
    assert run.renew_lease() is False
    with engine.connect() as conn:
        assert conn.execute(select(ledger.ISSUES.c.lease_owner)).scalar_one() == "otherhost:1"


def test_a_subscriber_who_leaves_after_the_page_was_read_is_skipped_not_mailed(engine, s):
    # A page holds up to 500 rows; under a rate limit it takes minutes to send, so
    # who may still be mailed is decided when a batch is claimed, not when it was read.
    from subscribers.models import Subscriber

    ids = add_subscribers(engine, s, 3)
    iid = issue_id(engine)
    ledger.write_recipients(engine, iid, "daily")
    run = ledger.LedgerRun(engine, iid, "host-a:1", fenced=False)
    rows = run.page(ledger.QUEUED, 0, 10, 5)
    assert all(r.eligible for r in rows)
    with engine.begin() as conn:
        conn.execute(update(Subscriber.__table__).where(Subscriber.__table__.c.id == ids[1])
                     .values(status="unsubscribed"))
    claimed, skipped = run.claim([r.id for r in rows], [])
    assert [r.subscriber_id for r in rows if r.id in claimed] == [ids[0], ids[2]]
    assert [r.subscriber_id for r in rows if r.id in skipped] == [ids[1]]
    counts = ledger.state_counts(engine, iid)
    assert counts["queued"] == 2 and counts["skipped"] == 1


def test_two_senders_reading_a_free_lease_at_once_do_not_both_take_it(postgres_database):
    """On PostgreSQL (read committed) a plain read-then-update lets the second of two
    processes that read a free lease overwrite the first's; the compare-and-set
    update makes the loser stop instead."""
    from sqlalchemy import event

    engine = open_database(postgres_database)
    iid = issue_id(engine)
    raced = []

    @event.listens_for(engine, "before_cursor_execute")
    def another_process_gets_in_first(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE ISSUES") and not raced:
            raced.append(True)
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as other:
                other.execute(update(ledger.ISSUES).values(
                    lease_owner="otherhost:1", lease_expires_at=clock.now() + timedelta(seconds=60)))

    try:
        with pytest.raises(DeliveryError, match="taken by another process"):
            ledger.acquire_lease(engine, iid)
    finally:
        event.remove(engine, "before_cursor_execute", another_process_gets_in_first)
    assert raced
    with engine.connect() as conn:
        assert conn.execute(select(ledger.ISSUES.c.lease_owner)).scalar_one() == "otherhost:1"


def test_a_send_waits_out_the_lease_of_a_holder_that_missed_its_heartbeat(engine, s):
    """A daemon that takes a day over from a stalled one finds the issue's lease a moment
    from its end (the stalled holder stopped renewing it): it waits that moment and
    sends, rather than failing the day until a retry minutes later.  A holder that
    renews on time (more than a third of its lease left) is refused at once."""
    import time
    from pipeline.delivery.deliver import take_lease

    iid = issue_id(engine)
    elsewhere = "otherhost:4242:1:stalled"  # on another host: only its lease's end frees it
    with engine.begin() as conn:
        conn.execute(update(ledger.ISSUES).where(ledger.ISSUES.c.id == iid).values(
            lease_owner=elsewhere, lease_expires_at=clock.now() + timedelta(seconds=0.6)))
    started = time.monotonic()
    mine = take_lease(engine, iid, 3.0, "thishost:1:1:new")
    assert mine == "thishost:1:1:new" and 0.5 < time.monotonic() - started < 3.0
    with engine.begin() as conn:  # a live holder renewing on time: 2.5 s of a 3 s lease left
        conn.execute(update(ledger.ISSUES).where(ledger.ISSUES.c.id == iid).values(
            lease_owner=elsewhere, lease_expires_at=clock.now() + timedelta(seconds=2.5)))
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="being sent by otherhost"):
        take_lease(engine, iid, 3.0, "thishost:1:1:new")
    assert time.monotonic() - started < 0.5
