"""Thirty random SIGKILLs of a real `newsletter send` to 5,000 recipients, resuming
after each, with the default settings (8 connections, uncertain_policy resend).
Counted at the server (aiosmtpd in this process): nobody is missed, and the only
duplicates are rows that were in flight (`sending`) at a kill: never more than
one per connection per kill, since each row is marked `sending` only as its
content goes out, in the transaction that records its connection's previous
outcome.  ``KILL_TEST_SEED`` replays a run."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from conftest import free_port
from fixtures_delivery import Script, add_subscribers, start_scripted_server
from pipeline.delivery import ledger
from pipeline.database import open_database

ROOT = Path(__file__).resolve().parent.parent
NEWSLETTER = ROOT / ".venv" / "bin" / "newsletter"
N = 5000
KILLS = 30
CONNECTIONS = 8  # the default of smtp_connections


@pytest.mark.slow
def test_thirty_kills_miss_nobody_and_double_at_most_one_message_per_connection_per_kill(content_dir, db_url,
                                                                                         settings):
    seed = int(os.environ.get("KILL_TEST_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    print(f"KILL_TEST_SEED={seed}")
    assert settings.uncertain_policy == "resend" and settings.smtp_connections == CONNECTIONS  # the defaults
    engine = open_database(db_url)
    add_subscribers(engine, settings.replace(secret_key="kill-test-secret"), N)
    port = free_port()
    controller, server = start_scripted_server(Script(pipelining=True), port)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "SMTP_"))} | {
        "DATABASE_URL": db_url, "NEWSLETTER_SECRET": "kill-test-secret", "NEWSLETTER_TRANSPORT": "smtp",
        "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port),
        # a hand send of the queue's head: with nothing scheduled, only when this is on
        "NEWSLETTER_SEND_WHEN_NOTHING_DUE": "true"}
    command = [str(NEWSLETTER), "--content", str(content_dir), "send", "--date", "2026-03-02", "--resume",
               "--no-progress"]
    in_flight: list[set[str]] = []  # the addresses `sending` in the ledger right after each kill
    try:
        for kill in range(KILLS):
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if kill % 6 == 0:  # at a random instant: start-up, the ledger write, the first messages
                time.sleep(rng.uniform(0.2, 1.5))
            else:  # after a random number of further messages reached the server
                target = len(server.accepted) + rng.randint(1, 120)
                deadline = time.monotonic() + 30
                while len(server.accepted) < target and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate()
            assert b"Traceback" not in err, err.decode()
            with engine.connect() as conn:
                in_flight.append(set(conn.execute(text("SELECT email FROM deliveries WHERE state = 'sending'"))
                                     .scalars()))
            print(f"kill {kill + 1}: {len(server.accepted)} accepted, {len(in_flight[-1])} in flight", flush=True)
        final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    finally:
        controller.stop()
    assert final.returncode == 0, final.stdout + final.stderr
    got = server.by_recipient()
    missed = {f"sub{i}@example.com" for i in range(N)} - set(got)
    assert not missed, f"{len(missed)} recipient(s) never got the issue"
    duplicates = {rcpt: n - 1 for rcpt, n in got.items() if n > 1}
    print(f"{len(server.accepted)} messages for {N} recipients; duplicates {sum(duplicates.values())}; "
          f"in flight at each kill {[len(s) for s in in_flight]}")
    # at most one row per connection in flight at any kill ...
    assert max(len(s) for s in in_flight) <= CONNECTIONS, [len(s) for s in in_flight]
    # ... and only those can have had a second copy, once for each kill that caught them in flight
    for rcpt, extra in duplicates.items():
        assert extra <= sum(rcpt in s for s in in_flight), (rcpt, extra)
    assert sum(duplicates.values()) <= CONNECTIONS * KILLS
    issue = ledger.find_issue(engine, "2026-03-02")
    counts = ledger.state_counts(engine, issue.id)
    assert counts["sent"] == N and issue.state == "sent", counts
    assert "uncertain 0" in final.stdout  # nothing left in doubt at the end
    # a duplicate is the same message again: same Message-ID, so a receiver can drop it
    assert len(server.message_ids()) == N
