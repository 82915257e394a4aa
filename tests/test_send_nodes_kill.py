"""Three `newsletter send` processes share one send to 20,000 recipients on a real
PostgreSQL, against a real SMTP server on loopback (aiosmtpd in this process); one
of them is killed with SIGKILL mid-send.  The other two finish it: nobody is
missed, the only second copies are rows the dead node had in flight (at most one
per connection), and what the server received matches the ledger exactly."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from conftest import free_port
from fixtures_delivery import add_subscribers
from pipeline.database import open_database
from pipeline.delivery import claims, ledger

ROOT = Path(__file__).resolve().parent.parent
NEWSLETTER = ROOT / ".venv" / "bin" / "newsletter"
N = 20_000
CONNECTIONS = 4  # per node
D = ledger.DELIVERIES
MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.MULTILINE | re.IGNORECASE)


@pytest.fixture(autouse=True)
def close_engines():
    """Close this test's pooled connections when it ends: the session's PostgreSQL server
    has max_connections 100, and later tests (50 parallel web clients) need them."""
    yield
    from pipeline.database import dispose_all
    dispose_all()


class Counting:
    """An aiosmtpd handler that keeps (recipient, Message-ID) of each message it accepts
    (read from the header block only, so 20,000 messages cost the test little)."""

    def __init__(self):
        self.accepted: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, _server, _session, envelope):
        head = envelope.content[:envelope.content.find(b"\r\n\r\n")]
        found = MESSAGE_ID.search(head)
        with self.lock:
            self.accepted.append((envelope.rcpt_tos[0], found.group(1).decode() if found else ""))
        return "250 2.0.0 OK queued"


def short_article(content_dir: Path) -> None:
    """The fixture article with a two-sentence body: the test is about sharing, not
    bytes, and a small message lets 20,000 of them pass in seconds."""
    path = content_dir / "articles" / "microneedling.md"
    text = path.read_text(encoding="utf-8")
    front = text[:text.index("\n---", 3) + 4]
    path.write_text(front + "\n\n## What it is\n\nMicroneedling’s evidence – £100 at a café 🎉.[^1] "
                    "It is a short course of treatment.[^2]\n", encoding="utf-8")


def sent_by_pid(engine, pid: int) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).where(D.c.state == ledger.SENT,
                                                       D.c.sent_by.like(f"%:{pid}:%"))).scalar_one()


@pytest.mark.postgres
@pytest.mark.slow
def test_three_nodes_share_a_send_and_survive_the_loss_of_one(postgres_database, settings, content_dir):
    from aiosmtpd.controller import Controller

    engine = open_database(postgres_database)
    short_article(content_dir)
    add_subscribers(engine, settings.replace(secret_key="nodes-kill-secret"), N)
    handler, port = Counting(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "SMTP_", "DATABASE_"))} | {
        "DATABASE_URL": postgres_database, "NEWSLETTER_SECRET": "nodes-kill-secret", "NEWSLETTER_TRANSPORT": "smtp",
        "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port), "NEWSLETTER_SEND_WHEN_NOTHING_DUE": "true",
        "NEWSLETTER_SMTP_CONNECTIONS": str(CONNECTIONS), "NEWSLETTER_LEASE_SECONDS": "6"}
    command = [str(NEWSLETTER), "--content", str(content_dir), "send", "--date", "2026-03-02", "--no-progress"]
    started = time.monotonic()
    try:
        procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
        victim = procs[0]
        deadline = time.monotonic() + 240
        while sent_by_pid(engine, victim.pid) < 2500 and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert victim.poll() is None, "the node to kill finished before its share reached 2,500"
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        with engine.connect() as conn:
            in_flight = conn.execute(select(func.count()).where(
                D.c.state == ledger.SENDING, D.c.claimed_by.like(f"%:{victim.pid}:%"))).scalar_one()
        outs = [p.communicate(timeout=300) for p in procs[1:]]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        controller.stop()
    elapsed = time.monotonic() - started
    assert [p.returncode for p in procs[1:]] == [0, 0], outs
    assert all("Traceback" not in err for _, err in outs), outs
    got = Counter(rcpt for rcpt, _ in handler.accepted)
    missed = {f"sub{i}@example.com" for i in range(N)} - set(got)
    assert not missed, f"{len(missed)} recipient(s) never got the issue"
    with engine.connect() as conn:
        rows = conn.execute(select(D.c.email, D.c.state, D.c.uncertain, D.c.sent_by, D.c.message_id)).all()
        issue_state = conn.execute(select(ledger.ISSUES.c.state)).scalar_one()
    assert issue_state == "sent" and all(r.state == ledger.SENT for r in rows) and len(rows) == N
    # the server matches the ledger exactly: one message per row, plus a second copy only of
    # the rows that were in flight on the dead node (uncertain, then resent)
    doubted = {r.email for r in rows if r.uncertain}
    duplicates = {rcpt: n - 1 for rcpt, n in got.items() if n > 1}
    assert set(duplicates) <= doubted, set(duplicates) - doubted
    assert len(doubted) <= CONNECTIONS and max(duplicates.values(), default=0) <= 1
    assert len(handler.accepted) == N + sum(duplicates.values())
    assert Counter(m for _, m in handler.accepted if m) == Counter(
        {r.message_id: 1 + duplicates.get(r.email, 0) for r in rows})
    # all three sent a substantial share; the dead node's rows in flight were at most one per connection
    shares = Counter(r.sent_by for r in rows)
    assert len(shares) == 3 and min(shares.values()) >= 2000, shares
    assert in_flight <= CONNECTIONS
    with engine.connect() as conn:
        nodes = conn.execute(select(claims.NODES.c.node, claims.NODES.c.ended)).all()
    assert sorted(e for _, e in nodes) == ["done", "done", "expired"], nodes
    print(f"3 nodes, {N} recipients in {elapsed:.1f} s; shares {sorted(shares.values())}; "
          f"in flight at the kill {in_flight}; duplicates {sum(duplicates.values())}")
