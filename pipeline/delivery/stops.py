"""The one way to stop a send that is under way: a stop request.

A request is a row in ``stop_requests`` (written by ``newsletter stop``, and by
``newsletter pause`` while something is sending), or, for a signal to the sending
process itself (SIGINT/SIGTERM to ``newsletter send`` or ``newsletter run``), a
flag in this process.  The sender (``pipeline.delivery.send_loop``) looks for both before
each message: it hands the relay nothing more, waits for the replies of the messages
already handed over (at most one per connection, at most ``smtp_timeout``), records
them, and ends with the rest still ``queued`` in the ledger, so no row is left uncertain.  The request row
then says when it was honoured and how far the send got, which ``status`` shows
("stopped by NAME at HH:MM, 904 of 3,000 sent") until it is released:
``newsletter send --date D --resume`` releases that day's, ``newsletter resume``
every one (and the daemon then finishes stopped days itself).

Which requests apply to a send (``pending_for``): an open one for its day, or an open
one for every day (a pause) made after the send began, so an old pause does not stop
a later hand send.  On a shared send every node obeys a request another node already
honoured (each records how far the send got as it leaves; the count only grows).  A
signal's record applies to no other send and does not hold the daemon (``blocks``):
a signal is a shutdown; ``newsletter stop`` and ``pause`` are the operator's stops.
"""
from __future__ import annotations

import getpass
import logging
import threading
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Date, Engine, Integer, String, and_, case, func, insert, or_, select, update
from sqlalchemy.orm import Mapped, mapped_column

from pipeline import clock
from pipeline.database import AwareDateTime, Base

log = logging.getLogger("newsletter.stop")

REASONS = ("stop", "pause", "signal")


class StopRecord(Base):
    __tablename__ = "stop_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[date | None] = mapped_column(Date)
    requested_by: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(String(16))
    requested_at: Mapped[datetime] = mapped_column(AwareDateTime())
    honoured_at: Mapped[datetime | None] = mapped_column(AwareDateTime())
    issue_key: Mapped[str | None] = mapped_column(String(64))
    sent: Mapped[int | None] = mapped_column(Integer)
    total: Mapped[int | None] = mapped_column(Integer)
    released_at: Mapped[datetime | None] = mapped_column(AwareDateTime())


T = StopRecord.__table__


@dataclass(frozen=True)
class StopRequest:
    id: int
    day: date | None
    by: str
    reason: str
    requested_at: datetime
    honoured_at: datetime | None = None
    issue_key: str | None = None
    sent: int | None = None
    total: int | None = None

    def describe(self, tz) -> str:
        """``stopped by NAME at HH:MM, 904 of 3,000 sent`` (once honoured)."""
        when = (self.honoured_at or self.requested_at).astimezone(tz)
        text = f"stopped by {self.by} at {when:%H:%M}"
        if self.sent is not None and self.total is not None:
            text += f", {self.sent:,} of {self.total:,} sent"
        return text


def _request(row) -> StopRequest:
    return StopRequest(row.id, row.day, row.requested_by, row.reason, row.requested_at, row.honoured_at,
                       row.issue_key, row.sent, row.total)


def operator(by: str | None = None) -> str:
    """Who asks: ``--by`` if given, else the OS user."""
    if by and by.strip():
        return " ".join(by.split())[:200]
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container without passwd entry)
        return "unknown user"


def request(engine: Engine, day: date | None, by: str, reason: str = "stop") -> StopRequest:
    assert reason in REASONS, reason
    with engine.begin() as conn:
        new_id = conn.execute(insert(T).values(day=day, requested_by=by, reason=reason,
                                               requested_at=clock.now()).returning(T.c.id)).scalar_one()
        row = conn.execute(select(T).where(T.c.id == new_id)).one()
    return _request(row)


def newest_id(engine: Engine) -> int:
    """The newest request id now: a send remembers it when it begins (see the module rule)."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(T.c.id), 0))).scalar_one())


def pending_for(engine: Engine, day: date, since_id: int, issue_key: str | None = None) -> list[StopRequest]:
    """Open requests that stop a send of ``day`` (issue ``issue_key``) begun when ``since_id``
    was the newest.  One already honoured still applies while it is open when it was made
    after this send began or was honoured by this very issue: on a shared send the first
    node to see a stop honours it, and every other node must stop for it too.  A signal's
    record (``record_signal``) is for the signalled process alone and never applies."""
    honoured_here = or_(T.c.honoured_at.is_(None), T.c.id > since_id)
    if issue_key is not None:
        honoured_here = or_(honoured_here, T.c.issue_key == issue_key)
    with engine.connect() as conn:
        rows = conn.execute(select(T).where(T.c.released_at.is_(None), T.c.reason != "signal", honoured_here, or_(
            T.c.day == day, and_(T.c.day.is_(None), T.c.id > since_id))).order_by(T.c.id)).all()
    return [_request(r) for r in rows]


def honour(engine: Engine, ids: list[int], issue_key: str, sent: int, total: int) -> None:
    """Record that the send of ``issue_key`` stopped for these requests, and how far it got.
    Every node of a shared send records it as it leaves; the count only grows, so the
    last one to leave leaves the final figure whatever the order of their writes."""
    if not ids:
        return
    more = case((T.c.sent.is_not(None) & (T.c.sent > sent) & (T.c.issue_key == issue_key), T.c.sent), else_=sent)
    with engine.begin() as conn:
        conn.execute(update(T).where(T.c.id.in_(ids)).values(honoured_at=clock.now(), issue_key=issue_key,
                                                            sent=more, total=total))


def record_signal(engine: Engine, day: date, by: str, issue_key: str, sent: int, total: int) -> StopRequest:
    """A stop by signal, recorded once it happened (so ``status`` shows it like the others)."""
    made = request(engine, day, by, "signal")
    honour(engine, [made.id], issue_key, sent, total)
    return stopped(engine, issue_key) or made


def stopped(engine: Engine, issue_key: str) -> StopRequest | None:
    """The open (unreleased) request that stopped ``issue_key``, if any."""
    with engine.connect() as conn:
        row = conn.execute(select(T).where(T.c.issue_key == issue_key, T.c.released_at.is_(None),
                                           T.c.honoured_at.is_not(None)).order_by(T.c.id.desc())).first()
    return _request(row) if row else None


def open_requests(engine: Engine) -> list[StopRequest]:
    with engine.connect() as conn:
        rows = conn.execute(select(T).where(T.c.released_at.is_(None)).order_by(T.c.id)).all()
    return [_request(r) for r in rows]


def blocks(engine: Engine, day: date) -> bool:
    """Is an open request keeping the daemon from finishing ``day``'s stopped send?  Any
    open one is, a signal's record too: the last sender of a day that was signalled
    (Ctrl-C of a hand send, SIGTERM of the only daemon) leaves the rest to an editor's
    ``resume``, never to a daemon that may wake days later.  On a shared send a signal
    to one node while others are live records nothing (``SendGuard.honour``)."""
    with engine.connect() as conn:
        return conn.execute(select(T.c.id).where(T.c.released_at.is_(None),
                                                 or_(T.c.day == day, T.c.day.is_(None)))).first() is not None


def release(engine: Engine, day: date | None = None) -> int:
    """Release the open requests of ``day`` (every open request when None); returns how many."""
    query = update(T).where(T.c.released_at.is_(None))
    if day is not None:
        query = query.where(T.c.day == day)
    with engine.begin() as conn:
        return conn.execute(query.values(released_at=clock.now())).rowcount


# -- a signal to this process ---------------------------------------------------------------

class _Signal:
    """Set by a signal handler (or a daemon shutting down); read by the sender between batches."""

    def __init__(self):
        self.event = threading.Event()
        self.by = ""

    def set(self, by: str) -> None:
        self.by = self.by or by
        self.event.set()

    def clear(self) -> None:
        self.by = ""
        self.event.clear()

    def __bool__(self) -> bool:
        return self.event.is_set()


SIGNALLED = _Signal()
