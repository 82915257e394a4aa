"""SIGKILL a real `newsletter send` subprocess at random moments and resume it each
time.  Counted at the server (aiosmtpd in this process): every recipient has the
issue at least once, and the only duplicates are rows the ledger marked uncertain,
never more than delivery_batch_size x smtp_connections per kill."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from conftest import free_port
from fixtures_delivery import Script, add_subscribers, start_scripted_server
from pipeline.delivery import ledger
from pipeline.database import open_database

ROOT = Path(__file__).resolve().parent.parent
NEWSLETTER = ROOT / ".venv" / "bin" / "newsletter"
N = 5000
CONNECTIONS, BATCH = 4, 10
BOUND = CONNECTIONS * BATCH


@pytest.mark.slow
def test_killed_sends_resume_to_everyone_with_duplicates_only_from_uncertain_rows(content_dir, db_url, settings):
    seed = int(os.environ.get("KILL_TEST_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    print(f"KILL_TEST_SEED={seed}")
    engine = open_database(db_url)
    add_subscribers(engine, settings.replace(secret_key="kill-test-secret"), N)
    port = free_port()
    controller, server = start_scripted_server(Script(), port)
    env = os.environ | {
        "DATABASE_URL": db_url, "NEWSLETTER_SECRET": "kill-test-secret", "NEWSLETTER_TRANSPORT": "smtp",
        "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port), "NEWSLETTER_SMTP_CONNECTIONS": str(CONNECTIONS),
        "NEWSLETTER_DELIVERY_BATCH_SIZE": str(BATCH), "NEWSLETTER_UNCERTAIN_POLICY": "resend",
        "NEWSLETTER_SMTP_TIMEOUT": "10",
        # a hand send of the queue's head: with nothing scheduled, only when this is on
        "NEWSLETTER_SEND_WHEN_NOTHING_DUE": "true"}
    command = [str(NEWSLETTER), "--content", str(content_dir), "send", "--date", "2026-03-02", "--resume",
               "--no-progress"]
    in_flight_at_kills = []
    try:
        # kill 1: at a random instant early on (start-up, ledger write or first batches);
        # kills 2-4: after a random number of further messages reached the server
        for kill in range(4):
            proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if kill == 0:
                time.sleep(rng.uniform(0.3, 2.5))
            else:
                target = len(server.accepted) + rng.randint(100, 1200)
                deadline = time.monotonic() + 60
                while len(server.accepted) < target and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            issue = ledger.find_issue(engine, "2026-03-02")
            if issue is not None:
                in_flight_at_kills.append(ledger.state_counts(engine, issue.id)["sending"])
        final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    finally:
        controller.stop()
    assert final.returncode == 0, final.stderr
    got = server.by_recipient()
    assert set(got) == {f"sub{i}@example.com" for i in range(N)}, "someone never got the issue"
    duplicates = sum(n - 1 for n in got.values())
    issue = ledger.find_issue(engine, "2026-03-02")
    with engine.connect() as conn:
        uncertain = conn.execute(select(func.coalesce(func.sum(ledger.DELIVERIES.c.uncertain), 0))
                                 .where(ledger.DELIVERIES.c.issue_id == issue.id)).scalar_one()
    print(f"duplicates {duplicates}, uncertain rows {uncertain}, in flight at each kill {in_flight_at_kills}")
    assert duplicates <= uncertain
    assert all(n <= BOUND for n in in_flight_at_kills)
    assert uncertain <= BOUND * len(in_flight_at_kills)
    assert ledger.state_counts(engine, issue.id)["sent"] == N and issue.state == "sent"
    # a duplicate is the same message again: same Message-ID, so a receiver can drop it
    assert len(server.message_ids()) == N
