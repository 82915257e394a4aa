"""`newsletter status`: alerts that last until dealt with, notes never cut, dead
daemons shown dead at once, and the JSON form for monitors."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, timedelta

import pytest
from sqlalchemy import update

from pipeline.scheduling import calendar
from pipeline import holders
from pipeline.delivery import leases
from pipeline import clock
from pipeline.delivery import ledger
from pipeline.errors import LeaseLost
from test_schedule_days import HOLDER, add_articles, days, utc  # noqa: F401  (days is a fixture)


def _words(text: str) -> str:
    return " ".join(text.split())


def test_a_content_error_day_keeps_alerting_after_the_next_day_sends_until_acknowledged(days):
    days.subscribe("reader@example.com")
    other = add_articles(days.content_dir, 1)[0]
    days.schedule("microneedling", date(2026, 3, 3))
    days.schedule(other, date(2026, 3, 4))
    broken = days.content_dir / "articles" / f"{other}.md"
    good = broken.read_text(encoding="utf-8")
    broken.write_text(good.replace("author: amy-murtagh", "author: nobody-we-know"), encoding="utf-8")
    days.wake_at(utc(2026, 3, 3, 7, 0))
    assert days.run(date(2026, 3, 3)).state == "content-error"
    note = days.run(date(2026, 3, 3)).error
    assert len(note) > 70
    broken.write_text(good, encoding="utf-8")
    days.wake_at(utc(2026, 3, 4, 7, 0))
    assert days.run(date(2026, 3, 4)).state == "sent"

    out = days.cli("status")
    assert out.exit_code == 2, out.output  # the old day still needs someone, though the latest sent
    assert "ALERT: daily issue of 2026-03-03 content-error" in out.output
    assert _words(note) in _words(out.output), "the note was cut"
    report = json.loads(days.cli("status", "--json").output)
    assert report["exit_code"] == 2 and [a["day"] for a in report["alerts"]] == ["2026-03-03"]

    acked = days.cli("status", "--ack", "2026-03-03")
    assert acked.exit_code == 0, acked.output
    assert "acknowledged: daily issue of 2026-03-03 (content-error)" in acked.output
    assert days.cli("status", "--ack", "2026-03-03").exit_code == 1  # nothing left to acknowledge


def test_a_missed_day_alerts_while_its_article_is_stranded(days):
    days.subscribe("reader@example.com")
    days.schedule("microneedling", date(2026, 3, 3))
    days.wake_at(utc(2026, 3, 3, 12, 0))  # the daemon was down all morning
    assert days.run(date(2026, 3, 3)).state == "missed"
    out = days.cli("status")
    assert out.exit_code == 2 and "2026-03-03 missed" in out.output, out.output
    assert days.cli("status", "--ack", "2026-03-03").exit_code == 0


def test_a_daemon_whose_process_died_is_shown_dead_at_once_and_json_has_the_schema(days):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    import socket
    dead = f"{socket.gethostname()}:{gone.pid}:1:deadbeef"
    leases.beat(days.engine, dead, clock.now())
    leases.beat(days.engine, holders.new_holder(), clock.now())  # this process: alive
    out = days.cli("status")
    assert f"daemon: dead (pid {gone.pid}" in out.output and "daemon: running" in out.output, out.output
    report = json.loads(days.cli("status", "--json").output)
    assert set(report) == {"now", "timezone", "exit_code", "sending", "daemons", "leases", "next", "runs", "alerts",
                           "queue", "mail_queue", "bounces", "waves", "senders"}
    assert report["senders"] == []  # no shared send (SQLite: one sender per issue)
    assert report["mail_queue"] == {"waiting": 0, "given_up": 0, "oldest_failure": None}
    assert report["bounces"] == []  # no issue has recipients yet
    assert sorted(d["state"] for d in report["daemons"]) == ["dead", "running"]
    assert {"holder", "host", "pid", "started_at", "last_seen", "alive", "state"} == set(report["daemons"][0])
    assert report["queue"]["known"] is True and report["sending"] == {"paused": False, "until": None}


def test_a_lost_lease_fences_every_ledger_and_run_write(days):
    """The stalled holder's writes change nothing once another process took over."""
    from pipeline.rendering.compose import compose_issue
    from pipeline.content.library import load_library

    days.subscribe("reader@example.com")
    days.subscribe("zoe@bücher.example")
    issue = compose_issue(load_library(days.content_dir), date(2026, 3, 2), number=1, scheduled=["microneedling"])
    info = ledger.record_issue(days.engine, issue, "What Is Microneedling?")
    owner = ledger.acquire_lease(days.engine, info.id, 5)
    ledger.write_recipients(days.engine, info.id, "daily", owner=owner)
    run = ledger.LedgerRun(days.engine, info.id, owner)
    rows = run.page(ledger.QUEUED, 0, 10, 5)
    claimed, _ = run.claim([rows[0].id], [])
    days.clock.advance(timedelta(seconds=6))  # stalled past the lease; another process takes over
    other = ledger.acquire_lease(days.engine, info.id, 5)
    assert other != owner
    with pytest.raises(LeaseLost):
        run.claim([rows[1].id], [])
    assert run.record([{"row": claimed[0], "new_state": "sent", "tried": 1, "reply": "250", "mid": None,
                        "retry_at": None}]) is False
    assert ledger.state_counts(days.engine, info.id)["sent"] == 0  # nothing written
    with pytest.raises(LeaseLost):
        ledger.finish_issue(days.engine, info.id, owner)

    # the run record: the holder that lost the day cannot record its outcome
    assert calendar.claim_run(days.engine, date(2026, 3, 2), "daily", "old", planned_at=None)
    assert calendar.claim_run(days.engine, date(2026, 3, 2), "daily", "new", planned_at=None, take_over=True)
    with pytest.raises(LeaseLost):
        calendar.finish_run(days.engine, date(2026, 3, 2), "daily", "old", "failed", error="false failure")
    assert days.run(date(2026, 3, 2)).state == "running" and days.run(date(2026, 3, 2)).holder == "new"
    with days.engine.begin() as conn:  # keep the tidy-up honest: release our lease
        conn.execute(update(ledger.ISSUES).values(lease_owner=None))
