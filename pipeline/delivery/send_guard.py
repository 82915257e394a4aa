"""What may end a send early, watched from beside the send loop.

``SendGuard`` keeps the issue's send lease alive from a thread of its own (so a
relay that takes seconds per reply, or a long retry wait, never lets it lapse)
and answers, before each message, whether the send must stop:

- the lease is lost (the issue's, or on a shared send this node's own,
  ``pipeline.delivery.claims``): a renewal found another holder, or this process was
  stalled (SIGSTOP, a frozen VM) for longer than it is sure to hold the lease.
  The loop then stops at once and writes nothing more (the ledger's writes are
  fenced as well, see pipeline/delivery/ledger.py);
- a stop request applies (``pipeline.delivery.stops``): a ``newsletter stop`` or
  ``pause`` row in the database, polled at most every ``POLL`` seconds, or a
  signal to this process.  The loop hands over nothing more and records the
  replies of the messages in flight, so the stop leaves nothing uncertain.
  On a shared send a signal to one node while others are live makes it leave
  (``honour`` records nothing; its unstarted rows go back to them).
"""
from __future__ import annotations

import logging
import threading
from datetime import date

from sqlalchemy import select

from pipeline import clock
from pipeline.delivery import claims, ledger
from pipeline.delivery import stops
from pipeline.mail.transport import Halt

log = logging.getLogger("newsletter.deliver")

POLL = 0.5  # seconds between looks at the stop_requests table
LEASE_LOST = "the send lease expired and another process took the issue over"


def _key_of(engine, issue_id: int) -> str | None:
    with engine.connect() as conn:
        return conn.execute(select(ledger.ISSUES.c.key).where(ledger.ISSUES.c.id == issue_id)).scalar_one_or_none()


class SendGuard:
    def __init__(self, engine, issue_id: int, day: date, owner: str, seconds: float, renew=None):
        self.engine, self.issue_id, self.day, self.owner = engine, issue_id, day, owner
        # what the heartbeat renews: the issue's lease, or (a node of a shared send) the node's own
        self.renew = renew or (lambda: ledger.renew_issue_lease(engine, issue_id, owner, self.seconds))
        self.seconds = max(float(seconds), 0.5)
        self.since_id = stops.newest_id(engine)
        self.issue_key = _key_of(engine, issue_id)
        self.left_to: list[str] = []  # a signalled node of a shared send: the live nodes it left the rest to
        self.valid_until = clock.monotonic() + self.seconds  # the lease was just taken
        self.lost = False
        self.requests: list[stops.StopRequest] = []
        self.signalled_by = ""
        self._polled = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="send-lease", daemon=True)

    # the lease heartbeat -----------------------------------------------------------------
    def __enter__(self) -> "SendGuard":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _keep(self) -> None:
        while not self._done.wait(self.seconds / 3):
            started = clock.monotonic()
            try:
                if self.renew():
                    self.valid_until = started + self.seconds
                else:
                    self.lost = True
                    return
            except Exception as exc:  # a database hiccup: the next beat tries again
                log.warning("could not renew the send lease: %s", exc)

    def lease_gone(self) -> bool:
        """Lost for certain, or possibly: this process has not renewed in time (it was stalled)."""
        if not self.lost and clock.monotonic() >= self.valid_until:
            self.lost = True
        return self.lost

    async def before_each(self) -> None:
        """Before each message is handed to the relay: never one more after the lease is gone."""
        if self.lease_gone():
            raise Halt(LEASE_LOST)

    # stop requests --------------------------------------------------------------------------
    def stop_reason(self) -> str:
        """Why the send must stop now ("" to go on)."""
        if self.lease_gone():
            return LEASE_LOST
        if stops.SIGNALLED:
            self.signalled_by = stops.SIGNALLED.by
            return f"stopped by {self.signalled_by}"
        now = clock.monotonic()
        if not self.requests and now - self._polled >= POLL:
            self._polled = now
            self.requests = stops.pending_for(self.engine, self.day, self.since_id, self.issue_key)
        if self.requests:
            return f"stopped by {self.requests[0].by}"
        return ""

    @property
    def stopped_on_request(self) -> bool:
        return bool(self.requests or self.signalled_by) and not self.lost

    def honour(self, issue_key: str, sent: int, total: int) -> stops.StopRequest | None:
        """Record on the request(s) that the send stopped, and how far it got.  A signal
        stops this process only: on a shared send with other live nodes nothing is
        recorded (this node leaves, its unstarted rows go back to them, ``left_to``
        names them); the last node records the stop for the day."""
        if self.requests:
            stops.honour(self.engine, [r.id for r in self.requests], issue_key, sent, total)
            return stops.stopped(self.engine, issue_key)
        if self.signalled_by:
            others = [n for n in claims.live_nodes(self.engine, [self.issue_id]).get(self.issue_id, [])
                      if n != self.owner]
            if others:
                self.left_to = others
                return None
            return stops.record_signal(self.engine, self.day, self.signalled_by, issue_key, sent, total)
        return None
