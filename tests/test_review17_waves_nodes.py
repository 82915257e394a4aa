"""review17: failing tests for defects where issue 15's two halves meet (waves x sender nodes).

Each test states what a user would see; each fails on main at cc675ee."""
from __future__ import annotations

import subprocess
import socket
from datetime import date

import pytest

from pipeline.delivery import ledger
from pipeline.scheduling import calendar
from test_schedule_days import Day, utc
from test_waves_daemon import arrivals, place

DAY = date(2026, 3, 10)


def dead_holder() -> str:
    """A holder name of a process on this host that has ended (as after kill -9)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}:?:deadbeef"


@pytest.fixture
def days(content_dir, tmp_path, db_url):
    from pipeline.clock import frozen_clock
    with frozen_clock(utc(2026, 3, 10, 6, 59)) as clock:
        day = Day(content_dir, tmp_path, db_url, clock)
        place(day, "london@example.com", None, None)
        place(day, "tokyo@example.com", "Asia/Tokyo", 20)  # 20:00 JST is 11:00Z, past the editors' grace
        day.schedule("microneedling", DAY)
        yield day


def test_a_daemon_killed_during_a_later_wave_sends_that_wave_after_a_restart(days):
    """The daemon is killed (OOM, kill -9, a reboot) while it sends the 11:00Z wave and is
    restarted a minute later.  The wave's readers must still get the issue.  On main the
    restarted daemon finds the run ``running`` past the *editors'* grace window (07:00 +
    120 min), records it ``failed`` ("not resumed within the grace window") and never sends
    the wave: the Tokyo reader is missed (and no later wave comes to pick the row up)."""
    days.wake_at(utc(2026, 3, 10, 7, 0))
    assert set(arrivals(days)) == {"london@example.com"}
    assert days.run(DAY).state == "waiting"
    # 11:00Z: the daemon takes the wave's run and is killed before it sends anything
    days.clock.set(utc(2026, 3, 10, 11, 0))
    taken = calendar.claim_run(days.engine, DAY, "daily", dead_holder(), planned_at=utc(2026, 3, 10, 7, 0),
                               retry=("waiting",))
    assert taken is not None and taken.state == "running"
    days.wake_at(utc(2026, 3, 10, 11, 1))  # the restarted daemon
    days.wake_at(utc(2026, 3, 10, 11, 10))
    assert {a: len(t) for a, t in arrivals(days).items()} == {"london@example.com": 1, "tokyo@example.com": 1}, \
        days.run(DAY)
    assert days.run(DAY).state == "sent", days.run(DAY)


def test_a_stop_honoured_by_one_node_still_stops_the_other_nodes(days):
    """``newsletter stop`` during a shared send (PostgreSQL, several nodes).  Each node's
    ``SendGuard`` polls ``stop_requests`` every 0.5 s, and ``stops.pending_for`` leaves out
    requests already honoured.  The first node to see the stop honours it within a few
    milliseconds (in-flight replies, ``finish_issue``, ``guard.honour``), so a node whose
    next poll comes after that never sees it and sends the rest of the issue: the stop is
    reported as honoured ("stopped by editor, N of M sent") while mail goes on."""
    from pipeline.delivery import stops
    from pipeline.delivery.send_guard import SendGuard

    issue = ledger.record_issue(days.engine, _issue_of(days), "subject")
    node_a = SendGuard(days.engine, issue.id, DAY, "host:1:x:a", 60, renew=lambda: True)
    node_b = SendGuard(days.engine, issue.id, DAY, "host:2:x:b", 60, renew=lambda: True)
    stops.request(days.engine, DAY, "editor")
    assert node_a.stop_reason() == "stopped by editor"
    assert node_a.honour(issue.key, 10, 100) is not None  # node a stopped and recorded it
    node_b._polled = -1e9  # node b's next poll is due now (0.5 s later in real life)
    assert node_b.stop_reason() == "stopped by editor"  # on main: "" -- node b sends on


def _issue_of(days):
    from pipeline.content.library import load_library
    from pipeline.scheduling.plan import plan_day
    plan = plan_day(days.engine, days.settings, load_library(days.content_dir), DAY, "daily")
    return plan.issue


@pytest.mark.postgres
@pytest.mark.slow
def test_newsletter_stop_stops_every_node_of_a_shared_send(postgres_database, settings, content_dir):
    """The same, end to end: two `newsletter send` processes share a send on PostgreSQL
    (40 msg/s shared), an editor stops the day 1.5 s in.  Every message after the stop
    was honoured is one the editor asked not to send."""
    import time

    from sqlalchemy import func, select

    from fixtures_delivery import Script, add_subscribers, start_scripted_server
    from conftest import free_port
    from pipeline.database import dispose_all, open_database
    from pipeline.delivery import stops
    from test_send_nodes import node_env, run_send

    engine = open_database(postgres_database)
    n = 200
    add_subscribers(engine, settings.replace(secret_key="nodes-test-secret"), n)
    port = free_port()
    controller, server = start_scripted_server(Script(pipelining=True), port)
    env = node_env(postgres_database, port, NEWSLETTER_SMTP_RATE_LIMIT="40", NEWSLETTER_SMTP_CONNECTIONS="1",
                   NEWSLETTER_DELIVERY_BATCH_SIZE="2")
    try:
        procs = [run_send(env, content_dir) for _ in range(2)]
        time.sleep(2.5)
        stops.request(engine, date(2026, 3, 2), "editor")
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        controller.stop()
    with engine.connect() as conn:
        sent = conn.execute(select(func.count()).where(ledger.DELIVERIES.c.state == ledger.SENT)).scalar_one()
    dispose_all()
    assert [p.returncode for p in procs] != [0, 0] and sent < n, (sent, outs)


@pytest.mark.postgres
def test_a_joining_node_that_takes_the_lead_keeps_each_readers_local_time(content_dir, tmp_path, postgres_database):
    """A daemon joins the day's send (``joining.join_day``) while the leading daemon has
    recorded the issue but not yet written its ledger, and the leader dies there.  The
    joiner takes the lead in ``wait_for_ledger`` and writes the recipients itself -- but
    ``join_day`` calls ``send_issue`` without ``releases``, so every row is released at
    once: the Tokyo reader (20:00 JST) gets the issue at 07:00Z, four hours early."""
    from pipeline.clock import frozen_clock
    from pipeline.database import dispose_all
    from pipeline.delivery.deliver import render_for_send
    from pipeline.scheduling.joining import join_day

    with frozen_clock(utc(2026, 3, 10, 7, 0, 30)) as clock:
        days = Day(content_dir, tmp_path, postgres_database, clock)
        place(days, "london@example.com", None, None)
        place(days, "tokyo@example.com", "Asia/Tokyo", 20)
        days.schedule("microneedling", DAY)
        issue = _issue_of(days)
        dead = dead_holder()
        recorded = ledger.record_issue(days.engine, issue, render_for_send(issue, days.settings).subject)
        ledger.acquire_lease(days.engine, recorded.id, 60, dead)  # the leader, killed before write_recipients
        run = calendar.claim_run(days.engine, DAY, "daily", dead, planned_at=utc(2026, 3, 10, 7, 0))
        join_day(days.engine, days.settings, content_dir, run)
        got = arrivals(days)
        dispose_all()
    assert "tokyo@example.com" not in got, got  # 20:00 in Tokyo is 11:00Z


def test_stopping_one_node_for_an_upgrade_does_not_hold_the_later_waves(days):
    """docs/deploy.md, "Upgrading one node at a time", step 2: stop a node with systemctl
    (SIGTERM) during a send, "which the other nodes go on sending".  On main the stopped
    node records a *signal* stop request for the day (``SendGuard.honour`` ->
    ``stops.record_signal``), never released, and the day's run ``stopped``; from then on
    ``stops.blocks(day)`` keeps every node (the restarted one too) from sending the
    day's later waves until someone runs ``newsletter resume``: the Tokyo reader is held."""
    from pipeline.delivery import stops

    stops.SIGNALLED.set("shutdown of newsletter run (pid 4242)")  # systemctl stop, as the wave begins
    try:
        days.wake_at(utc(2026, 3, 10, 7, 0))
    finally:
        stops.SIGNALLED.clear()
    assert days.run(DAY).state == "stopped"
    days.wake_at(utc(2026, 3, 10, 7, 1))  # the upgraded node is back (or another node wakes)
    days.wake_at(utc(2026, 3, 10, 11, 0))
    days.wake_at(utc(2026, 3, 10, 11, 1))
    # the stopped wave's own rows may wait for `resume` (deploy.md, systemd units); the later wave may not
    assert len(arrivals(days).get("tokyo@example.com", [])) == 1, days.run(DAY)


@pytest.mark.postgres
def test_stop_and_status_see_a_shared_send_whose_first_node_died(content_dir, tmp_path, postgres_database):
    """Three `newsletter send` nodes share a send; the first one (the issue's lease holder)
    is killed, the others go on (test_send_nodes_kill).  ``sending_days`` and status's
    ``_hand_sends`` still decide "is this issue being sent" from the issue's lease alone, so
    on main `newsletter stop --date D` answers "nothing is being sent; nothing to stop"
    while a live node is mailing, and `status` alerts "hand send interrupted ... --resume"."""
    import json

    from pipeline.clock import frozen_clock
    from pipeline.database import dispose_all
    from pipeline.delivery import claims
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
        dispose_all()
    runs = json.loads(status.output)["runs"]
    mine = [r for r in runs if r["issue_key"] == "2026-03-10"]
    assert mine and mine[0]["state"] == "sending" and not mine[0]["alert"], mine
    assert "nothing to stop" not in stop.output, stop.output
