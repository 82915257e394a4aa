"""The emergency stop, with real processes and a counting relay on loopback:
`newsletter stop`, `pause`, SIGINT/SIGTERM to `newsletter send` and to the daemon
all stop a send before its next message, with nothing uncertain; `status` tells the
truth meanwhile; `send --resume` or `resume` finishes the send, nobody twice."""
from __future__ import annotations

import json
import os
import re
import signal
import time
from datetime import date, datetime, timezone

import pytest
from sqlalchemy import text

from fixtures_delivery import add_subscribers
from fixtures_stop import SECRET, Processes, eventually, start_relay
from pipeline.scheduling import calendar

pytestmark = pytest.mark.slow
UTC = timezone.utc
DAY = date(2026, 6, 16)  # a Tuesday in BST
N = 600


@pytest.fixture
def world(tmp_path, content_dir, db_url, settings):
    from pipeline.database import open_database

    engine = open_database(db_url)
    add_subscribers(engine, settings.replace(secret_key=SECRET), N, name="Zoë “Test” 王")
    controller, relay = start_relay(delay=0.01)
    made = []

    def processes(fake_start: datetime, **extra) -> Processes:
        procs = Processes(tmp_path, content_dir, db_url, relay.port, fake_start, **extra)
        made.append(procs)
        return procs

    yield engine, relay, processes
    for procs in made:
        procs.close()
    controller.stop()


def ledger(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT state, count(*) FROM deliveries GROUP BY state")).all())


def status_json(procs) -> tuple[int, dict]:
    out = procs.run("status", "--json")
    return out.returncode, json.loads(out.stdout)


def test_newsletter_stop_and_a_signal_stop_a_hand_send_cleanly_and_resume_finishes_it(world):
    engine, relay, processes = world
    calendar.add_entry(engine, "microneedling", DAY, None)  # a hand send sends the day's scheduled issue
    procs = processes(datetime(2026, 6, 16, 9, 0, tzinfo=UTC))
    send = procs.start("send", "send", "--date", DAY.isoformat(), "--no-progress")
    relay.wait_for(100)
    # a hand send has no run row of its own yet: status shows it from the ledger, live
    code, report = status_json(procs)
    (live,) = [r for r in report["runs"] if r["issue_key"] == DAY.isoformat()]
    assert live["state"] == "sending" and 0 < live["counts"]["sent"] <= relay.count(), live
    assert live["counts"]["total"] == N and report["alerts"] == [], report
    stopped = procs.run("stop", "--by", "Ana Lúcia")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert send.wait(timeout=20) == 3, procs.log("send")
    line = re.search(r"issue 2026-06-16 stopped by Ana Lúcia at \d\d:\d\d, ([\d,]+) of 600 sent", stopped.stdout)
    assert line, stopped.stdout
    counts = ledger(engine)
    # a clean stop: nothing in flight, nothing uncertain, the rest still queued
    assert set(counts) == {"sent", "queued"}, counts
    assert counts["sent"] == relay.count() == int(line.group(1).replace(",", "")), (counts, relay.count())
    assert "--resume" in procs.log("send").strip().splitlines()[-1]
    assert "Traceback" not in procs.log("send")

    code, report = status_json(procs)
    assert code == 2 and any("stopped by Ana Lúcia" in a["message"] for a in report["alerts"]), report
    (row,) = [r for r in report["runs"] if r["issue_key"] == DAY.isoformat()]
    assert row["state"] == "stopped" and row["counts"]["sent"] == relay.count() and row["alert"], row
    # `resume` lifts the stop but sends nothing by itself here (no daemon): the alert stays, with the one action
    assert procs.run("resume").returncode == 0
    code, report = status_json(procs)
    assert code == 2 and [a["message"] for a in report["alerts"]
                          if "--resume` finishes it" in a["message"]], report

    # resume, and stop again with a signal this time
    again = procs.start("again", "send", "--date", DAY.isoformat(), "--resume", "--no-progress")
    relay.wait_for(counts["sent"] + 100)
    again.send_signal(signal.SIGINT)
    assert again.wait(timeout=20) == 3, procs.log("again")
    last = procs.log("again").strip().splitlines()[-1]
    assert re.search(r"stopped by SIGINT \(.+\) at \d\d:\d\d, [\d,]+ of 600 sent; `newsletter send --date "
                     r"2026-06-16 --resume` finishes it", last), last
    counts = ledger(engine)
    assert set(counts) == {"sent", "queued"} and counts["sent"] == relay.count(), counts

    done = procs.run("send", "--date", DAY.isoformat(), "--resume", "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    assert ledger(engine) == {"sent": N}
    assert relay.count() == N and max(relay.by_recipient().values()) == 1
    code, report = status_json(procs)
    assert code == 0 and report["alerts"] == [], report


def test_pause_stops_the_daemons_send_status_tells_the_truth_and_resume_finishes_it(world):
    engine, relay, processes = world
    relay.delay = 0.03  # about 20 s in all: time enough to look at it and stop it on a busy machine
    calendar.add_entry(engine, "microneedling", DAY, None)
    procs = processes(datetime(2026, 6, 16, 5, 59, 58, tzinfo=UTC))
    procs.start("daemon", "run", "--no-web")
    relay.wait_for(60, timeout=60)
    # during the send: the daemon is alive, and the counts agree with the relay's
    for _ in range(3):
        before = relay.count()
        code, report = status_json(procs)
        after = relay.count()
        assert [d["state"] for d in report["daemons"]] == ["running"], report["daemons"]
        (run,) = [r for r in report["runs"] if r["day"] == DAY.isoformat()]
        assert run["state"] == "running" and run["subject"] == "What Is Microneedling?"
        c = run["counts"]
        assert c["total"] == N and c["sent"] <= after and before <= c["sent"] + c["sending"], (c, before, after)
        assert c["sent"] > 0
    paused = procs.run("pause")
    assert paused.returncode == 0, paused.stderr
    assert "stopping the send under way (2026-06-16)" in paused.stdout
    run = eventually(lambda: (r := calendar.get_run(engine, DAY, "daily")) and r.state == "stopped" and r, 20,
                     "the send to stop")
    counts = ledger(engine)
    assert set(counts) == {"sent", "queued"} and counts["sent"] == relay.count(), counts
    assert re.search(rf"stopped by \S+ at \d\d:\d\d, {counts['sent']:,} of 600 sent", run.error), run.error
    time.sleep(2.5)
    assert relay.count() == counts["sent"]  # stays stopped while paused
    status = procs.run("status")
    assert status.returncode == 2 and "stopped by" in status.stdout and "newsletter resume" in status.stdout

    resumed = procs.run("resume")
    assert resumed.returncode == 0 and "2026-06-16" in resumed.stdout, resumed.stdout
    eventually(lambda: calendar.get_run(engine, DAY, "daily").state == "sent", 60, "the daemon to finish")
    assert relay.count() == N and max(relay.by_recipient().values()) == 1
    code, report = status_json(procs)
    (run,) = [r for r in report["runs"] if r["day"] == DAY.isoformat()]
    assert code == 0 and run["counts"]["sent"] == N == relay.count(), report


def test_sigterm_stops_the_daemons_send_and_a_killed_daemon_is_taken_over_at_once(world):
    engine, relay, processes = world
    relay.delay = 0.03  # about 20 s in all: time enough to look at it and stop it on a busy machine
    calendar.add_entry(engine, "microneedling", DAY, None)
    # the default lease (120 s): a takeover that waited for it would not finish in time
    procs = processes(datetime(2026, 6, 16, 5, 59, 58, tzinfo=UTC), NEWSLETTER_LEASE_SECONDS="120",
                      NEWSLETTER_UNCERTAIN_POLICY="resend")  # nobody missed after the kill
    first = procs.start("first", "run", "--no-web")
    relay.wait_for(60, timeout=60)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=20) == 0, procs.log("first")
    log = procs.log("first")
    assert "SIGTERM" in log and "stopped by SIGTERM to newsletter run" in log and "Traceback" not in log, log
    run = calendar.get_run(engine, DAY, "daily")
    counts = ledger(engine)
    assert run.state == "stopped" and set(counts) == {"sent", "queued"} and counts["sent"] == relay.count()

    # a daemon started again finishes it once released, and a kill -9 of it is taken over at once
    second = procs.start("second", "run", "--no-web")
    assert procs.run("resume").returncode == 0
    relay.wait_for(counts["sent"] + 60, timeout=60)
    second.send_signal(signal.SIGKILL)
    second.wait()
    code, report = status_json(procs)
    assert [d["state"] for d in report["daemons"]] == ["dead"], report["daemons"]
    killed_at = time.monotonic()
    procs.start("third", "run", "--no-web")
    eventually(lambda: calendar.get_run(engine, DAY, "daily").state == "sent", 60, "the takeover to finish")
    assert time.monotonic() - killed_at < 60, "waited for the dead daemon's lease to expire"
    with engine.connect() as conn:
        uncertain = set(conn.execute(text("SELECT email FROM deliveries WHERE uncertain > 0")).scalars())
    counts = relay.by_recipient()
    assert len(counts) == N and ledger(engine) == {"sent": N}
    assert {r for r, n in counts.items() if n > 1} <= uncertain and len(uncertain) <= 10
    assert "Traceback" not in procs.logs()
