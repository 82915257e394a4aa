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


def _issue_of(days):
    from pipeline.content.library import load_library
    from pipeline.scheduling.plan import plan_day
    plan = plan_day(days.engine, days.settings, load_library(days.content_dir), DAY, "daily")
    return plan.issue


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
