"""The transactional mail queue: confirmation, welcome and data-link emails.

A web request never talks to the relay.  It writes the finished message into
``mail_queue`` in the same transaction as the consent record it belongs to, so
either both exist or neither does, and returns.  A worker sends it:

- ``newsletter serve`` runs a ``MailWorker`` thread next to the web app, and
  ``newsletter run`` runs one next to the scheduler;
- any number of workers (web processes, daemons) may share a database: a row is
  claimed by a compare-and-set ``UPDATE ... WHERE state = 'queued'``, as the
  send ledger does, so only one worker ever sends it;
- a failed attempt (relay down, timeout, refusal) puts the row back with
  ``next_at`` pushed out exponentially (``mail_retry_seconds``, doubling, at most
  an hour); after ``mail_max_attempts`` tries it is ``failed`` and
  ``newsletter status`` shows it.  Nothing is dropped while the relay is down.
- a worker that dies mid-send leaves its row ``sending``.  Workers are named like
  the send leases' holders (``pipeline.holders``: host, pid, process start), so a
  row whose worker on this host has died is claimed again at once; a row whose
  worker runs on another host (which cannot be checked from here) is claimed again
  after ``STALE``.  A row whose worker is alive on this host is never taken from
  it, however long its send takes or however the clock jumps: that would mail the
  person twice.  So a crash can, rarely, mean one duplicate, never a loss.

Once sent, a row keeps only its kind, subscriber and times: the recipient and
the message bytes are cleared.  Erasure deletes a person's rows outright.
"""
from __future__ import annotations

import logging
import socket
import threading
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Callable

from sqlalchemy import Engine, delete, func, or_, select, update

from pipeline import clock
from pipeline import holders
from pipeline.database import transaction
from pipeline.errors import DeliveryError
from pipeline.mail import verp
from subscribers import limits
from subscribers.models import QueuedMail

log = logging.getLogger(__name__)

STALE = timedelta(minutes=10)  # a row "sending" this long, by a worker on another host, is taken back
MAX_DELAY = 3600.0
KEEP_SENT = timedelta(days=7)  # sent rows (no address, no body) are kept this long for status


def enqueue(session, message: EmailMessage, *, kind: str, subscriber_id: int | None) -> None:
    """Add ``message`` to the queue inside the caller's transaction."""
    at = clock.now()
    recipient = message["To"].addresses[0].addr_spec
    session.add(QueuedMail(subscriber_id=subscriber_id, kind=kind, recipient=recipient, body=message.as_bytes(),
                           state="queued", attempts=0, next_at=at, created_at=at))


def _delay(settings, attempts: int) -> float:
    return min(float(settings.mail_retry_seconds) * 2 ** max(attempts - 1, 0), MAX_DELAY)


def _abandoned(claimed_by: str | None, claimed_at: datetime | None, at: datetime) -> bool:
    """Whether a row left ``sending`` by ``claimed_by`` may be claimed again now."""
    if holders.is_dead(claimed_by):
        return True  # its worker on this host has exited
    host, pid, _ = holders.parse(claimed_by or "")
    if host == socket.gethostname() and pid is not None:
        return False  # alive here: still sending (its relay call has its own timeout)
    return claimed_at is not None and claimed_at < at - STALE


def _claim(engine: Engine, worker: str, row_id: int, at: datetime,
           taken_from: str | None = None) -> QueuedMail | None:
    """Claim a queued row, or (``taken_from``) a row that worker abandoned; compare-and-set."""
    table = QueuedMail.__table__
    with transaction(engine) as s:
        was = (table.c.state == "queued") if taken_from is None else \
            ((table.c.state == "sending") & (table.c.claimed_by == taken_from))
        won = s.execute(update(table).where(table.c.id == row_id, was)
                        .values(state="sending", claimed_by=worker, claimed_at=at)).rowcount
        if won != 1:
            return None
        row = s.get(QueuedMail, row_id)
        s.expunge(row)
        return row


def _finish(engine: Engine, worker: str, row: QueuedMail, error: str | None, settings) -> None:
    table = QueuedMail.__table__
    at = clock.now()
    mine = (table.c.id == row.id) & (table.c.claimed_by == worker) & (table.c.state == "sending")
    with transaction(engine) as s:
        if error is None:
            s.execute(update(table).where(mine).values(state="sent", sent_at=at, recipient=None, body=None,
                                                       last_error=None))
        else:
            attempts = row.attempts + 1
            gave_up = attempts >= int(settings.mail_max_attempts)
            s.execute(update(table).where(mine).values(
                state="failed" if gave_up else "queued", attempts=attempts, last_error=error[:500],
                failed_at=row.failed_at or at, next_at=at + timedelta(seconds=_delay(settings, attempts))))


def deliver_due(engine: Engine, settings, send: Callable | None = None, *, worker: str | None = None,
                limit: int = 50) -> tuple[int, int]:
    """Send what is due, oldest first; returns (sent, failed).  Stops at the first
    failure: the relay is probably down, and the next row would only wait as long."""
    from pipeline.mail.transport import send_single

    send = send or send_single
    worker = worker or holders.new_holder()
    at = clock.now()
    table = QueuedMail.__table__
    with engine.connect() as conn:
        rows = conn.execute(select(table.c.id, table.c.state, table.c.claimed_by, table.c.claimed_at).where(or_(
            (table.c.state == "queued") & (table.c.next_at <= at), table.c.state == "sending"))
            .order_by(table.c.id).limit(limit)).all()
    due = [(r.id, None if r.state == "queued" else r.claimed_by) for r in rows
           if r.state == "queued" or _abandoned(r.claimed_by, r.claimed_at, at)]
    sent = failed = 0
    for row_id, taken_from in due:
        row = _claim(engine, worker, row_id, clock.now(), taken_from)
        if row is None:
            continue  # another worker has it
        try:
            message = message_from_bytes(row.body, policy=policy.SMTP)
            if send is send_single:  # the envelope sender names this row (VERP), so a bounce finds it
                send(settings, message, mail_from=verp.return_path(settings, "q", row.id))
            else:
                send(settings, message)
        except (DeliveryError, OSError) as exc:
            _finish(engine, worker, row, str(exc) or type(exc).__name__, settings)
            log.warning("queued %s email (row %s) not sent, will retry: %s", row.kind, row.id, exc)
            failed += 1
            break
        except Exception as exc:  # a bug or a bad message must not stop the worker, nor be retried at once
            _finish(engine, worker, row, f"{type(exc).__name__}: {exc}", settings)
            log.exception("queued %s email (row %s) failed", row.kind, row.id)
            failed += 1
            continue
        _finish(engine, worker, row, None, settings)
        sent += 1
    return sent, failed


def pending(engine: Engine) -> int:
    """Rows still to send, or being sent now."""
    table = QueuedMail.__table__
    with engine.connect() as conn:
        return conn.execute(select(func.count()).where(table.c.state.in_(("queued", "sending")))).scalar_one()


def counts(engine: Engine) -> dict[str, int]:
    table = QueuedMail.__table__
    with engine.connect() as conn:
        return dict(conn.execute(select(table.c.state, func.count()).group_by(table.c.state)).all())


def summary(engine: Engine) -> dict:
    """The queue for ``newsletter status`` (and its JSON): waiting, given up, the oldest failure."""
    table = QueuedMail.__table__
    with engine.connect() as conn:
        depth = conn.execute(select(func.count()).where(table.c.state.in_(("queued", "sending")))).scalar_one()
        failed = conn.execute(select(func.count()).where(table.c.state == "failed")).scalar_one()
        oldest = conn.execute(select(table.c.failed_at, table.c.last_error).where(
            table.c.state.in_(("queued", "sending", "failed")), table.c.failed_at.is_not(None))
            .order_by(table.c.failed_at).limit(1)).first()
    return {"waiting": depth, "given_up": failed,
            "oldest_failure": None if oldest is None else {"at": oldest.failed_at.isoformat(),
                                                           "error": (oldest.last_error or "")[:80]}}


def status_line(engine: Engine) -> str:
    """One line for ``newsletter status``: the depth and the oldest failure."""
    found = summary(engine)
    line = f"mail queue: {found['waiting']} waiting, {found['given_up']} given up"
    if found["oldest_failure"]:
        line += f"; oldest failure {found['oldest_failure']['at'][:16].replace('T', ' ')} UTC: " \
                f"{found['oldest_failure']['error']}"
    return line


def tidy(engine: Engine) -> None:
    """Forget sent rows after ``KEEP_SENT`` and rate-limit windows that are over."""
    table = QueuedMail.__table__
    at = clock.now()
    with transaction(engine) as s:
        s.execute(delete(table).where(table.c.state == "sent", table.c.sent_at < at - KEEP_SENT))
        limits.prune(s, at)


def drain(engine: Engine, settings, send: Callable | None = None, timeout: float = 10.0) -> None:
    """Send everything due now and wait for rows other workers are sending (tests, the CLI)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        deliver_due(engine, settings, send)
        table = QueuedMail.__table__
        with engine.connect() as conn:
            busy = conn.execute(select(func.count()).where(or_(
                table.c.state == "sending",
                (table.c.state == "queued") & (table.c.next_at <= clock.now())))).scalar_one()
        if not busy or time.monotonic() > deadline:
            return
        time.sleep(0.02)


class MailWorker:
    """A background thread that sends the queue: woken at once by ``wake()`` (after
    an enqueue in this process), else every ``mail_poll_seconds``; after a failure it
    waits with exponential backoff before trying the relay again."""

    def __init__(self, engine: Engine, settings, send: Callable | None = None):
        self.engine, self.settings, self.send = engine, settings, send
        self.name = holders.new_holder()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "MailWorker":
        self._thread = threading.Thread(target=self._run, name="mail-queue", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        poll = float(self.settings.mail_poll_seconds)
        failures = 0
        passes = 0
        while not self._stop.is_set():
            self._wake.clear()
            try:
                _, failed = deliver_due(self.engine, self.settings, self.send, worker=self.name)
                if passes % 600 == 0:
                    tidy(self.engine)
                passes += 1
            except Exception:  # the database went away: keep the thread, try again later
                log.exception("mail queue worker: pass failed")
                failed = 1
            failures = failures + 1 if failed else 0
            # capped at a minute: each row has its own, longer backoff in next_at
            wait = min(_delay(self.settings, failures), max(poll, 60.0)) if failures else poll
            if failures:
                self._stop.wait(wait)  # backoff: a wake-up does not hammer a relay that is down
            else:
                self._wake.wait(wait)
