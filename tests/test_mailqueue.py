"""The transactional mail queue's claims: a row whose worker is alive is never sent
again by another worker, whatever the clock does; a dead worker's row is taken at once."""
from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from email.message import EmailMessage

import pytest

from fixtures_subscribers import subscriber_settings
from pipeline import holders
from pipeline.database import open_database, transaction
from subscribers import mailqueue
from subscribers.models import QueuedMail


@pytest.fixture
def queue(settings, tmp_path, frozen):
    qsettings = subscriber_settings(settings, tmp_path, database_url=f"sqlite:///{tmp_path / 'q.db'}")
    engine = open_database(qsettings.database_url)
    message = EmailMessage()
    message["To"] = "reader@example.com"
    message["Subject"] = "Confirm"
    message.set_content("x")
    with transaction(engine) as s:
        mailqueue.enqueue(s, message, kind="confirm", subscriber_id=None)
    return qsettings, engine


def test_a_row_whose_worker_is_alive_is_never_taken_however_the_clock_jumps(queue, frozen):
    qsettings, engine = queue
    sent = []
    first = holders.new_holder()  # this process: alive
    (row_id,) = [r.id for r in _rows(engine)]
    assert mailqueue._claim(engine, first, row_id, frozen.now()) is not None  # mid-send, say on a slow relay
    frozen.advance(days=1, minutes=1)
    assert mailqueue.deliver_due(engine, qsettings, lambda _s, m: sent.append(m), worker=holders.new_holder()) == (0, 0)
    assert sent == [] and _rows(engine)[0].claimed_by == first


def test_a_dead_workers_row_is_taken_at_once_and_sent_once(queue, frozen):
    qsettings, engine = queue
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    import socket
    dead = f"{socket.gethostname()}:{gone.pid}:1:deadbeef"
    (row_id,) = [r.id for r in _rows(engine)]
    assert mailqueue._claim(engine, dead, row_id, frozen.now()) is not None
    sent = []
    assert mailqueue.deliver_due(engine, qsettings, lambda _s, m: sent.append(m)) == (1, 0)
    assert len(sent) == 1 and _rows(engine)[0].state == "sent"
    assert mailqueue.deliver_due(engine, qsettings, lambda _s, m: sent.append(m)) == (0, 0) and len(sent) == 1


def test_another_hosts_row_is_taken_only_after_stale(queue, frozen):
    qsettings, engine = queue
    other = "elsewhere.example:4242:1:cafe"
    (row_id,) = [r.id for r in _rows(engine)]
    assert mailqueue._claim(engine, other, row_id, frozen.now()) is not None
    sent = []
    frozen.advance(minutes=5)
    assert mailqueue.deliver_due(engine, qsettings, lambda _s, m: sent.append(m)) == (0, 0)
    frozen.advance(seconds=mailqueue.STALE.total_seconds())
    assert mailqueue.deliver_due(engine, qsettings, lambda _s, m: sent.append(m)) == (1, 0) and len(sent) == 1


def _rows(engine):
    with transaction(engine) as s:
        rows = s.query(QueuedMail).all()
        for row in rows:
            s.expunge(row)
        return rows
