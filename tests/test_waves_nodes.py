"""Issue 15's two halves together: delivery-time waves across daemon restarts and
sender nodes.  A wave's lateness counts from its own release instant (not the
editors' 07:00), a run left in any state with a released wave not yet sent is
picked up again, and whichever process writes an issue's ledger (daemon, hand
send, a node that joins and takes the lead) releases each row at its reader's
local time."""
from __future__ import annotations

import ast
import socket
import subprocess
from datetime import date
from pathlib import Path

import pytest

from pipeline.delivery import ledger
from pipeline.scheduling import calendar
from test_schedule_days import Day, utc
from test_waves_daemon import arrivals, place

DAY = date(2026, 3, 10)
ROOT = Path(__file__).resolve().parent.parent


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


def _first_wave_then_killed_at_eleven(days) -> None:
    """07:00Z the London wave goes; 11:00Z a daemon takes the Tokyo wave's run and is killed."""
    days.wake_at(utc(2026, 3, 10, 7, 0))
    assert set(arrivals(days)) == {"london@example.com"}
    assert days.run(DAY).state == "waiting"
    days.clock.set(utc(2026, 3, 10, 11, 0))
    taken = calendar.claim_run(days.engine, DAY, "daily", dead_holder(), planned_at=utc(2026, 3, 10, 7, 0),
                               retry=("waiting",))
    assert taken is not None and taken.state == "running"


def test_a_daemon_killed_during_a_later_wave_sends_that_wave_after_a_restart(days):
    """Killed (OOM, kill -9, reboot) as it sends the 11:00Z wave and restarted a minute
    later: the wave is inside its own grace window, so the restarted daemon resumes the
    run and the Tokyo reader gets the issue, once.  (It used to judge the run by the
    editors' 07:00 + grace, record it failed, and never send the wave.)"""
    _first_wave_then_killed_at_eleven(days)
    days.wake_at(utc(2026, 3, 10, 11, 1))  # the restarted daemon
    days.wake_at(utc(2026, 3, 10, 11, 10))
    assert {a: len(t) for a, t in arrivals(days).items()} == {"london@example.com": 1, "tokyo@example.com": 1}, \
        days.run(DAY)
    assert days.run(DAY).state == "sent", days.run(DAY)


def test_a_run_killed_in_a_later_wave_expires_after_that_waves_own_grace(days):
    """The same kill, but the daemon is back only after the Tokyo wave's own window
    (11:00Z + 120 min): it is not sent hours late; the run is failed with the line that
    tells an editor how to finish it, and `status` shows it."""
    _first_wave_then_killed_at_eleven(days)
    days.wake_at(utc(2026, 3, 10, 13, 5))
    assert set(arrivals(days)) == {"london@example.com"}
    run = days.run(DAY)
    assert run.state == "failed" and "--resume" in (run.error or ""), run


def test_a_wave_released_while_a_send_finished_is_sent_at_the_next_wake(days):
    """A send finishing just after 11:00Z counts the Tokyo row (released a moment before,
    never claimed) as undelivered: the issue is unfinished and the run failed, after the
    run's last end.  The next wake sends that wave at once (it was released after that
    attempt began) instead of leaving it for good because the editors' grace closed at
    09:00Z."""
    days.wake_at(utc(2026, 3, 10, 7, 0))
    assert days.run(DAY).state == "waiting"
    days.clock.set(utc(2026, 3, 10, 10, 59, 59))
    holder = "other-host:1:x:finishing"
    assert calendar.claim_run(days.engine, DAY, "daily", holder, planned_at=utc(2026, 3, 10, 7, 0),
                              retry=("waiting",)) is not None
    days.clock.set(utc(2026, 3, 10, 11, 0, 1))
    issue = ledger.find_issue(days.engine, "2026-03-10")
    assert ledger.finish_issue(days.engine, issue.id) == "unfinished"
    calendar.finish_run(days.engine, DAY, "daily", holder, "failed", issue_key=issue.key,
                        error="unfinished: 1 recipient(s) not yet delivered")
    days.wake_at(utc(2026, 3, 10, 11, 2))
    assert {a: len(t) for a, t in arrivals(days).items()} == {"london@example.com": 1, "tokyo@example.com": 1}
    assert days.run(DAY).state == "sent", days.run(DAY)


@pytest.mark.postgres
def test_a_joining_node_that_takes_the_lead_keeps_each_readers_local_time(content_dir, tmp_path, postgres_database):
    """A daemon joins the day's send while the leading daemon has recorded the issue but
    not yet written its ledger, and the leader dies there.  The joiner takes the lead and
    writes the recipients itself, each at their own local time: the Tokyo reader (20:00
    JST, 11:00Z) is not mailed at 07:00Z, and the ledger holds the 11:00Z wave."""
    from pipeline.clock import frozen_clock
    from pipeline.database import dispose_all
    from pipeline.delivery.deliver import render_for_send
    from pipeline.scheduling import wave_sends
    from pipeline.scheduling.joining import join_day

    with frozen_clock(utc(2026, 3, 10, 7, 0, 30)) as clock:
        days = Day(content_dir, tmp_path, postgres_database, clock)
        place(days, "london@example.com", None, None)
        place(days, "tokyo@example.com", "Asia/Tokyo", 20)
        days.schedule("microneedling", DAY)
        from pipeline.content.library import load_library
        from pipeline.scheduling.plan import plan_day
        issue = plan_day(days.engine, days.settings, load_library(days.content_dir), DAY, "daily").issue
        dead = dead_holder()
        recorded = ledger.record_issue(days.engine, issue, render_for_send(issue, days.settings).subject)
        ledger.acquire_lease(days.engine, recorded.id, 60, dead)  # the leader, killed before write_recipients
        run = calendar.claim_run(days.engine, DAY, "daily", dead, planned_at=utc(2026, 3, 10, 7, 0))
        join_day(days.engine, days.settings, content_dir, run)
        got = arrivals(days)
        waves = wave_sends.waves_of_issue(days.engine, recorded.key, clock.now())
        dispose_all()
    assert set(got) == {"london@example.com"}, got
    assert [(w.instant, w.total, w.released) for w in waves][-1] == (utc(2026, 3, 10, 11, 0), 1, False), waves


def test_only_send_with_waves_reaches_send_issue_for_an_issue():
    """No caller can forget the waves: in pipeline/, ``send_issue`` is called only by
    ``wave_sends.send_with_waves`` (daemon, `newsletter send`, joining node) and by the
    correction notices (which go at once by design)."""
    callers = set()
    for path in (ROOT / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "send_issue":
                callers.add(path.relative_to(ROOT).as_posix())
    assert callers == {"pipeline/scheduling/wave_sends.py", "pipeline/corrections/send.py"}, callers
