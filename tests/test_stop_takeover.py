"""A daemon that stalls (SIGSTOP) longer than the send lease, mid-send, while a
second daemon waits: the second takes over and finishes, and the stalled one, on
waking, notices it lost the lease before it writes or sends anything more.  Real
processes, a counting relay on loopback."""
from __future__ import annotations

import os
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
N = 400
LEASE = 3
IN_FLIGHT_BOUND = 10  # one batch on one connection


def _sent(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM deliveries WHERE state = 'sent'")).scalar()


def test_a_stalled_sender_loses_its_lease_cleanly_and_the_new_holder_records_the_truth(tmp_path, content_dir,
                                                                                        db_url, settings):
    from pipeline.database import open_database

    engine = open_database(db_url)
    add_subscribers(engine, settings.replace(secret_key=SECRET), N)
    calendar.add_entry(engine, "microneedling", DAY, None)
    controller, relay = start_relay(delay=0.02)
    procs = Processes(tmp_path, content_dir, db_url, relay.port, datetime(2026, 6, 16, 5, 59, 57, tzinfo=UTC),
                      NEWSLETTER_LEASE_SECONDS=str(LEASE), NEWSLETTER_UNCERTAIN_POLICY="resend")
    try:
        procs.start("a", "run", "--no-web")
        procs.start("b", "run", "--no-web")
        eventually(lambda: _sent(engine) >= 60, 60, "the send to start")
        holder = calendar.get_run(engine, DAY, "daily").holder
        pid = int(holder.split(":")[1])
        stalled = next(name for name, p in procs.procs.items() if p.pid == pid)
        os.kill(pid, signal.SIGSTOP)
        try:
            # the other daemon takes over once the lease has run out
            eventually(lambda: calendar.get_run(engine, DAY, "daily").holder != holder, LEASE * 6, "a takeover")
            eventually(lambda: _sent(engine) >= 150, 60, "the new holder to send")
        finally:
            os.kill(pid, signal.SIGCONT)
        run = eventually(lambda: (r := calendar.get_run(engine, DAY, "daily")) and r.state != "running" and r, 90,
                         "the run to end")
        time.sleep(3)  # the woken daemon has had time to do something wrong
        run = calendar.get_run(engine, DAY, "daily")
        counts = relay.by_recipient()
        duplicates = {rcpt: n for rcpt, n in counts.items() if n > 1}
        with engine.connect() as conn:
            uncertain = set(conn.execute(text("SELECT email FROM deliveries WHERE uncertain > 0")).scalars())
            states = dict(conn.execute(text("SELECT state, count(*) FROM deliveries GROUP BY state")).all())
        logs = procs.logs()
        assert run.state == "sent", (run, logs)
        assert run.sent == N and states == {"sent": N}, (run, states)
        assert len(counts) == N, "somebody was missed"
        assert len(duplicates) <= IN_FLIGHT_BOUND and set(duplicates) <= uncertain, (duplicates, uncertain)
        assert "Traceback" not in logs, logs
        assert "lost the send lease" in procs.log(stalled), logs
        assert "failed" not in procs.log(stalled).lower(), logs
        other = "b" if stalled == "a" else "a"
        assert f"sent {N}" in procs.log(other) or "sent " in procs.log(other), logs
        assert logs.count("daily issue 2026-06-16 (microneedling): sent") == 1, logs
    finally:
        procs.close()
        controller.stop()
