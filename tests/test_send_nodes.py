"""Several sender nodes share one send (issue 15), on a real PostgreSQL: claims by
SKIP LOCKED never overlap, a node whose claims were taken back writes nothing, the
rate limit is the issue's whatever the number of nodes, and SQLite refuses to
share in one line.  The three-process kill test is in test_send_nodes_kill.py."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from conftest import free_port
from fixtures_delivery import Script, add_subscribers, small_rendered, start_scripted_server
from pipeline import clock, holders
from pipeline.database import open_database
from pipeline.delivery import claims, ledger
from pipeline.errors import DeliveryError, LeaseLost

ROOT = Path(__file__).resolve().parent.parent
NEWSLETTER = ROOT / ".venv" / "bin" / "newsletter"
D = ledger.DELIVERIES


@pytest.fixture(autouse=True)
def close_engines():
    """Close this test's pooled connections when it ends: the session's PostgreSQL server
    has max_connections 100, and later tests (50 parallel web clients) need them."""
    yield
    from pipeline.database import dispose_all
    dispose_all()


@pytest.fixture
def s(settings):
    return settings.replace(secret_key="nodes-test-secret")


def written_issue(engine, s, n: int) -> int:
    add_subscribers(engine, s, n, name="Zoë O’Brien – 测试 🎉")
    rendered = small_rendered(subject="Café £5 – 微针 🎉")
    iid = ledger.record_issue(engine, rendered.issue, rendered.subject).id
    assert ledger.write_recipients(engine, iid, "daily") == n
    return iid


@pytest.mark.postgres
def test_fifty_concurrent_claimers_never_take_the_same_row(postgres_database, s):
    engine = open_database(postgres_database)
    iid = written_issue(engine, s, 1500)
    barrier = threading.Barrier(50)
    taken: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def claimer() -> None:
        node = holders.new_holder()
        claims.join(engine, iid, node, 60)
        run = claims.SharedLedgerRun(engine, iid, node)
        mine: list[int] = []
        try:
            barrier.wait()
            while True:
                rows, skipped = run.claim_batch(ledger.QUEUED, 7, 3)
                assert skipped == 0
                if not rows:
                    break
                mine += [r.id for r in rows]
                assert all(r.name == "Zoë O’Brien – 测试 🎉" and r.eligible for r in rows)
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)
        taken[node] = mine

    threads = [threading.Thread(target=claimer) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    every = [i for ids in taken.values() for i in ids]
    assert len(every) == len(set(every)) == 1500  # each row once, none left
    assert sum(1 for ids in taken.values() if ids) > 10  # many claimers got rows: nobody waited on another
    with engine.connect() as conn:
        holder_of = dict(conn.execute(select(D.c.id, D.c.claimed_by).where(D.c.issue_id == iid)).all())
    assert all(holder_of[i] == node for node, ids in taken.items() for i in ids)


@pytest.mark.postgres
def test_a_node_whose_claims_were_taken_back_writes_nothing_and_stops(postgres_database, s):
    engine = open_database(postgres_database)
    iid = written_issue(engine, s, 30)
    a, b = "otherhost:101:x:aaaa", "otherhost:202:x:bbbb"  # another host: only the expiry frees them
    claims.join(engine, iid, a, 60)
    claims.join(engine, iid, b, 60)
    run_a = claims.SharedLedgerRun(engine, iid, a)
    rows, _ = run_a.claim_batch(ledger.QUEUED, 10, 3)
    assert len(rows) == 10
    assert run_a.write([], hand=[rows[0].id]) == {rows[0].id}  # its content goes out next
    assert claims.reap(engine, iid, "resend") == 0  # a live node's rows are left alone
    # a stalls past its lease; b finds it expired and takes its rows back
    with engine.begin() as conn:
        conn.execute(update(claims.NODES).where(claims.NODES.c.node == a)
                     .values(expires_at=clock.now() - timedelta(seconds=1)))
    assert claims.reap(engine, iid, "resend") == 1  # the one row in flight: uncertain, resent
    with engine.connect() as conn:
        before = {r.id: tuple(r) for r in conn.execute(select(D).where(D.c.issue_id == iid))}
    flight = before[rows[0].id]
    with engine.connect() as conn:
        row = conn.execute(select(D).where(D.c.id == rows[0].id)).one()
    assert (row.state, row.uncertain, row.claimed_by) == (ledger.DEFERRED, 1, None), flight
    assert all(before[r.id][D.c.keys().index("claimed_by")] is None for r in rows)  # back in the queue
    # a wakes up: its outcome, its mark and its next claim all change nothing
    outcome = {"row": rows[0].id, "new_state": ledger.SENT, "tried": 1, "doubt": 0, "reply": "250 ok",
               "mid": "<x@y>", "retry_at": None}
    with pytest.raises(LeaseLost):
        run_a.write([outcome], hand=[rows[1].id])
    with pytest.raises(LeaseLost):
        run_a.claim_batch(ledger.QUEUED, 10, 3)
    assert not claims.renew(engine, iid, a, 60)  # its heartbeat learns it too, and the run stops
    with engine.connect() as conn:
        after = {r.id: tuple(r) for r in conn.execute(select(D).where(D.c.issue_id == iid))}
    assert after == before
    # b sends them all, the stalled node's in-flight row included
    run_b = claims.SharedLedgerRun(engine, iid, b)
    got = run_b.claim_batch(ledger.QUEUED, 50, 3)[0] + run_b.claim_batch(ledger.DEFERRED, 50, 3)[0]
    assert sorted(r.id for r in got) == sorted(before)
    run_a.close()  # the driver connections of their writes go back to the pool
    run_b.close()


def run_send(env: dict, content_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([str(NEWSLETTER), "--content", str(content_dir), "send", "--date", "2026-03-02",
                             "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def node_env(db_url: str, port: int, **extra: str) -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "SMTP_", "DATABASE_"))} | {
        "DATABASE_URL": db_url, "NEWSLETTER_SECRET": "nodes-test-secret", "NEWSLETTER_TRANSPORT": "smtp",
        "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port), "NEWSLETTER_SEND_WHEN_NOTHING_DUE": "true",
        "NEWSLETTER_FAKE_NOW": "2026-03-02T09:00:00+00:00"} | extra


@pytest.mark.postgres
@pytest.mark.slow
def test_two_nodes_share_the_rate_limit_rather_than_double_it(postgres_database, s, content_dir):
    engine = open_database(postgres_database)
    n, rate = 120, 40.0
    add_subscribers(engine, s, n)
    port = free_port()
    controller, server = start_scripted_server(Script(pipelining=True), port)
    env = node_env(postgres_database, port, NEWSLETTER_SMTP_RATE_LIMIT=str(rate), NEWSLETTER_SMTP_CONNECTIONS="2",
                   NEWSLETTER_DELIVERY_BATCH_SIZE="2")
    try:
        procs = [run_send(env, content_dir) for _ in range(2)]
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        controller.stop()
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(server.accepted) == n and len(server.by_recipient()) == n
    with engine.connect() as conn:
        sent = conn.execute(select(D.c.sent_by, D.c.updated_at).where(D.c.state == ledger.SENT)).all()
    by_node: dict[str, int] = {}
    for node, _ in sent:
        by_node[node] = by_node.get(node, 0) + 1
    assert len(by_node) == 2 and min(by_node.values()) >= n // 5, by_node  # both sent a share
    span = (max(t for _, t in sent) - min(t for _, t in sent)).total_seconds()
    # n messages at `rate` a second take (n - 1) / rate seconds in all, not half that
    assert span >= 0.85 * (n - 1) / rate, (span, by_node)
    assert span <= 2.5 * (n - 1) / rate, (span, by_node)
    # `newsletter status` names both nodes and each one's count, from the ledger
    done = subprocess.run([str(NEWSLETTER), "--content", str(content_dir), "status", "--json"], env=env,
                          capture_output=True, text=True, timeout=60)
    senders = json.loads(done.stdout)["senders"]
    assert {(x["node"], x["sent"]) for x in senders} == set(by_node.items()), senders
    assert all(x["issue"] == "2026-03-02" and not x["live"] and x["ended"] == "done" and x["holding"] == 0
               for x in senders), senders
    shown = subprocess.run([str(NEWSLETTER), "--content", str(content_dir), "status"], env=env | {"COLUMNS": "200"},
                           capture_output=True, text=True, timeout=60).stdout
    assert "Senders" in shown and all(f"pid {x['pid']} on {x['host']}" in shown for x in senders), shown


def test_sqlite_refuses_to_share_a_send_in_one_line(content_dir, db_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "SMTP_", "DATABASE_"))} | {
        "DATABASE_URL": db_url, "NEWSLETTER_SECRET": "nodes-test-secret"}
    done = subprocess.run([str(NEWSLETTER), "--content", str(content_dir), "run", "--join", "--no-web"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert len(lines) == 1 and "PostgreSQL" in lines[0] and "Traceback" not in done.stderr, done.stderr
    # the setting says the same to a hand send, before anything is recorded
    done = subprocess.run([str(NEWSLETTER), "--content", str(content_dir), "send", "--date", "2026-03-02"],
                          env=env | {"NEWSLETTER_SEND_NODES": "share"}, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "PostgreSQL" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert ledger.issue_count(open_database(db_url)) == 0


def test_sharing_is_decided_by_the_setting_and_the_database(settings, db_url):
    sqlite = open_database(db_url)
    assert claims.sharing(settings, sqlite) is False  # auto on SQLite: one sender, as before
    assert claims.sharing(settings.replace(send_nodes="single"), sqlite) is False
    with pytest.raises(DeliveryError, match="only on PostgreSQL"):
        claims.sharing(settings.replace(send_nodes="share"), sqlite)
    with pytest.raises(DeliveryError, match="send_nodes must be"):
        claims.sharing(settings.replace(send_nodes="many"), sqlite)


@pytest.mark.postgres
@pytest.mark.slow
def test_two_daemons_on_postgresql_share_the_days_send(tmp_path, content_dir, postgres_database, settings):
    """The daemon's hook: a daemon that finds the day being sent by another live daemon
    joins the send (it used to wait).  One run row, one "sent" log line, two senders."""
    from datetime import date, datetime, timezone

    from fixtures_stop import SECRET, Processes, eventually, start_relay
    from pipeline.scheduling import calendar

    day, n = date(2026, 6, 16), 300
    engine = open_database(postgres_database)
    add_subscribers(engine, settings.replace(secret_key=SECRET), n)
    calendar.add_entry(engine, "microneedling", day, None)
    controller, relay = start_relay(delay=0.02)  # the send lasts a few seconds: long enough to join
    procs = Processes(tmp_path, content_dir, postgres_database, relay.port,
                      datetime(2026, 6, 16, 5, 59, 58, tzinfo=timezone.utc), NEWSLETTER_LEASE_SECONDS="5")
    try:
        procs.start("a", "run", "--no-web")
        procs.start("b", "run", "--no-web", "--join")
        run = eventually(lambda: (r := calendar.get_run(engine, day, "daily")) and r.state != "running" and r, 90,
                         "the day's send to end")
        time.sleep(1)
        with engine.connect() as conn:
            shares = dict(conn.execute(select(D.c.sent_by, func.count()).where(D.c.state == ledger.SENT)
                                       .group_by(D.c.sent_by)).all())
        logs = procs.logs()
        assert run.state == "sent" and run.sent == n, (run, logs)
        counts = relay.by_recipient()
        assert len(counts) == n and max(counts.values()) == 1, logs  # everyone once
        assert len(shares) == 2 and min(shares.values()) >= n // 10, (shares, logs)  # both daemons sent
        assert "joining the send" in logs and "Traceback" not in logs, logs
        assert logs.count("daily issue 2026-06-16 (microneedling): sent") == 1, logs
    finally:
        procs.close()
        controller.stop()
