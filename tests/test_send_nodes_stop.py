"""Stopping a shared send (several sender nodes, ``pipeline/delivery/claims.py``):
`newsletter stop` and `pause` stop every node, not just the first to see the request,
and wait for the last one; a signal to one node (a rolling upgrade) makes that node
leave its rows to the others instead of stopping the day; `stop` and `status` see a
send that goes on after its first node died.  SQLite's single sender is unchanged."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from pipeline.delivery import claims, ledger, stops
from pipeline.delivery.send_guard import SendGuard
from test_schedule_days import Day, utc
from test_waves_daemon import arrivals, place
from test_waves_nodes import DAY, dead_holder, days  # noqa: F401  (days: the fixture)



def _issue_of(days):
    from pipeline.content.library import load_library
    from pipeline.scheduling.plan import plan_day
    plan = plan_day(days.engine, days.settings, load_library(days.content_dir), DAY, "daily")
    return plan.issue


def _guard(days, issue, node: str) -> SendGuard:
    """A node's guard as the send loop holds it (its heartbeat thread is not started here)."""
    return SendGuard(days.engine, issue.id, DAY, node, 60, renew=lambda: True)


def test_a_stop_one_node_honoured_still_stops_the_other_nodes(days):
    """Each node polls ``stop_requests`` every 0.5 s; the first to see a stop honours it
    within milliseconds.  A node whose next poll comes after that must stop for it too
    (it used to skip honoured requests and send the rest of the issue)."""
    issue = ledger.record_issue(days.engine, _issue_of(days), "subject")
    node_a, node_b = _guard(days, issue, "host:1:x:a"), _guard(days, issue, "host:2:x:b")
    stops.request(days.engine, DAY, "Zoë Ōkubo")
    assert node_a.stop_reason() == "stopped by Zoë Ōkubo"
    assert node_a.honour(issue.key, 10, 100) is not None  # node a stopped and recorded it
    node_b._polled = -1e9  # node b's next poll is due now (0.5 s later in real life)
    assert node_b.stop_reason() == "stopped by Zoë Ōkubo"
    # node b leaves later, with more recorded; a node recording a smaller count after it changes nothing
    node_b.honour(issue.key, 12, 100)
    assert node_a.honour(issue.key, 10, 100).sent == 12


def test_which_stop_requests_a_send_obeys(days):
    """Honoured requests apply while open when made during this send or honoured by this
    issue; an old stop another issue honoured does not, and a release ends them."""
    engine = days.engine
    issue = ledger.record_issue(engine, _issue_of(days), "subject")
    old = stops.request(engine, DAY, "Ana")
    stops.honour(engine, [old.id], "2026-03-10-topic-cafés", 1, 2)  # another issue of the day, before this send
    first = _guard(days, issue, "host:1:x:a")
    assert first.stop_reason() == ""
    pause = stops.request(engine, None, "Bea", "pause")
    stops.honour(engine, [pause.id], "2026-03-09", 5, 9)  # another day's send saw the pause first
    first._polled = -1e9
    assert first.stop_reason() == "stopped by Bea"
    stops.release(engine)
    mine = stops.request(engine, DAY, "Cai")
    stops.honour(engine, [mine.id], issue.key, 4, 9)
    assert _guard(days, issue, "host:2:x:b").stop_reason() == "stopped by Cai"  # it stands until released
    stops.release(engine, DAY)
    assert _guard(days, issue, "host:3:x:c").stop_reason() == ""


def test_a_signal_to_one_node_leaves_its_rows_to_the_others_and_records_no_stop(days):
    """SIGTERM to one node of a shared send (docs/deploy.md, a rolling upgrade): that node
    leaves, nothing is recorded while another node is live, and only the last node's
    signal is recorded: like any stop it holds the daemon until `resume`, but it stops no
    other send by itself."""
    engine = days.engine
    issue = ledger.record_issue(engine, _issue_of(days), "subject")
    a, b = "node-a.example:11:x:a", "node-b.example:12:x:b"
    claims.join(engine, issue.id, a, 60)
    claims.join(engine, issue.id, b, 60)
    stops.SIGNALLED.set("SIGTERM to newsletter run (pid 4242)")
    try:
        node_a = _guard(days, issue, a)
        assert node_a.stop_reason() == "stopped by SIGTERM to newsletter run (pid 4242)"
        assert node_a.honour(issue.key, 3, 100) is None and node_a.left_to == [b]
        assert stops.open_requests(engine) == []
        claims.leave(engine, issue.id, a)
        node_b = _guard(days, issue, b)
        assert node_b.stop_reason()
        recorded = node_b.honour(issue.key, 5, 100)
        assert recorded is not None and recorded.reason == "signal" and (recorded.sent, recorded.total) == (5, 100)
    finally:
        stops.SIGNALLED.clear()
    assert stops.blocks(engine, DAY)  # the last node's signal: the rest waits for an editor
    assert _guard(days, issue, "node-c.example:13:x:c").stop_reason() == ""


def test_a_signal_to_the_only_sender_holds_the_rest_of_the_day_until_resume(days):
    """SIGTERM of the only daemon during a wave (SQLite, one node).  The day is recorded
    ``stopped`` and nothing more goes out, not even at the later wave's time or days
    later, until an editor says `newsletter resume`; then the rest goes, each reader once.
    (On a shared send a signal to one node leaves the rest to the live nodes:
    test_a_signal_to_one_node_leaves_its_rows_to_the_others_and_records_no_stop.)"""
    stops.SIGNALLED.set("shutdown of newsletter run (pid 4242)")  # systemctl stop, as the wave begins
    try:
        days.wake_at(utc(2026, 3, 10, 7, 0))
    finally:
        stops.SIGNALLED.clear()
    assert days.run(DAY).state == "stopped"
    for at in (utc(2026, 3, 10, 7, 1), utc(2026, 3, 10, 11, 0), utc(2026, 3, 10, 11, 1), utc(2026, 3, 12, 7, 30)):
        days.wake_at(at)
    assert arrivals(days) == {} or all(not t for t in arrivals(days).values()), arrivals(days)
    assert days.run(DAY).state == "stopped"
    assert days.cli("resume").exit_code == 0
    days.wake_at(utc(2026, 3, 12, 7, 31))
    assert {a: len(t) for a, t in arrivals(days).items()} == {"london@example.com": 1, "tokyo@example.com": 1}
    assert days.run(DAY).state == "sent", days.run(DAY)


@pytest.mark.postgres
@pytest.mark.slow
def test_newsletter_stop_stops_every_node_of_a_shared_send(postgres_database, settings, content_dir):
    """Two `newsletter send` processes share a send on PostgreSQL (40 msg/s between
    them); `newsletter stop` 2.5 s in.  Both stop (exit 3), `stop` returns only once
    both have left, and the count it prints is what the relay got, which stays so."""
    import time

    from sqlalchemy import func, select

    from fixtures_delivery import Script, add_subscribers, start_scripted_server
    from conftest import free_port
    from pipeline.database import dispose_all, open_database
    from test_send_nodes import NEWSLETTER, node_env, run_send

    engine = open_database(postgres_database)
    n = 300
    add_subscribers(engine, settings.replace(secret_key="nodes-test-secret"), n, name="Zoë O’Brien – 测试 🎉")
    port = free_port()
    controller, server = start_scripted_server(Script(pipelining=True), port)
    env = node_env(postgres_database, port, NEWSLETTER_SMTP_RATE_LIMIT="40", NEWSLETTER_SMTP_CONNECTIONS="1",
                   NEWSLETTER_DELIVERY_BATCH_SIZE="2")
    try:
        procs = [run_send(env, content_dir) for _ in range(2)]
        time.sleep(2.5)
        stop = subprocess.run([str(NEWSLETTER), "--content", str(content_dir), "stop", "--date", "2026-03-02",
                               "--by", "Zoë Ōkubo", "--wait", "30"], env=env, capture_output=True, text=True,
                              timeout=60)
        with engine.connect() as conn:
            states = dict(conn.execute(select(ledger.DELIVERIES.c.state, func.count())
                                       .group_by(ledger.DELIVERIES.c.state)).all())
        relayed = len(server.accepted)
        outs = [p.communicate(timeout=60) for p in procs]
        time.sleep(0.5)
        after = len(server.accepted)
    finally:
        controller.stop()
    dispose_all()
    assert stop.returncode == 0, stop.stdout + stop.stderr
    line = re.search(r"issue 2026-03-02 stopped by Zoë Ōkubo at \d\d:\d\d, ([\d,]+) of 300 sent", stop.stdout)
    assert line, stop.stdout
    assert [p.returncode for p in procs] == [3, 3], outs
    assert set(states) == {"sent", "queued"}, states  # a clean stop on both nodes: nothing in flight
    assert int(line.group(1).replace(",", "")) == states["sent"] == relayed == after < n, (line, states, relayed)
    assert not any("Traceback" in out + err for out, err in outs)


@pytest.mark.postgres
def test_stop_and_status_see_a_shared_send_whose_first_node_died(content_dir, tmp_path, postgres_database):
    """Three nodes share a send; the first (the issue's lease holder) is killed and the
    others go on.  `status` shows the issue ``sending`` with no alert, and `stop` stops
    it (they used to judge by the issue's lease alone: "nothing to stop", and an
    "interrupted ... --resume" alert while a node was mailing)."""
    from pipeline.clock import frozen_clock
    from pipeline.database import dispose_all
    from pipeline import holders

    with frozen_clock(utc(2026, 3, 10, 7, 0, 30)) as clock:
        days = Day(content_dir, tmp_path, postgres_database, clock)
        for i in range(20):
            place(days, f"reader{i}@example.com", None, None)
        days.schedule("microneedling", DAY)
        recorded = ledger.record_issue(days.engine, _issue_of(days), "subject")
        dead = dead_holder()
        ledger.acquire_lease(days.engine, recorded.id, 60, dead)  # the first node, killed
        assert ledger.write_recipients(days.engine, recorded.id, "daily", owner=dead) == 20
        claims.join(days.engine, recorded.id, dead, 60)
        survivor = holders.new_holder()  # this process: a live node, still sending
        claims.join(days.engine, recorded.id, survivor, 60)
        rows, _ = claims.SharedLedgerRun(days.engine, recorded.id, survivor).claim_batch(ledger.QUEUED, 5, 3)
        assert len(rows) == 5
        status = days.cli("status", "--json")
        stop = days.cli("stop", "--date", "2026-03-10", "--wait", "0.5")
        requests = stops.open_requests(days.engine)
        dispose_all()
    runs = json.loads(status.output)["runs"]
    mine = [r for r in runs if r["issue_key"] == "2026-03-10"]
    assert mine and mine[0]["state"] == "sending" and not mine[0]["alert"], mine
    assert "nothing to stop" not in stop.output and "stopping the send of 2026-03-10" in stop.output, stop.output
    assert [(r.day, r.reason) for r in requests] == [(DAY, "stop")]  # the survivor stops at its next look
