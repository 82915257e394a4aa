"""The send ledger: issues, and one row per (issue, subscriber) delivery.

Building stays apart from sending: before any message of an issue goes out, its
recipients are written here, and each row's state is recorded before and after
its SMTP transaction.  A retry or a restart reads the ledger, so it never sends
twice and never skips anyone (see pipeline/delivery/deliver.py for the state machine).

Tables (schema owned by migration 0002):

- ``issues``: one row per issue key (``2026-03-02``, ``2026-03-02-weekly``), with
  what was composed (number, subject, article slugs, audience topic) and the
  send's state.  ``lease_owner``/``lease_expires_at`` stop two processes from
  sending the same issue at once.
- ``deliveries``: the ledger proper.  ``email`` is a snapshot of the address at
  the time the recipients were chosen.  ``uncertain`` counts how often the row
  was found in flight (``sending``) after a crash: such a message may have
  reached the relay before its state was recorded.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Sequence

from sqlalchemy import (Date, Engine, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, and_, bindparam,
                        case, exists, func, insert, literal, or_, select, update)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from pipeline import clock
from pipeline import holders
from pipeline.database import AwareDateTime, Base
from pipeline.errors import DeliveryError, LeaseLost
from pipeline.rendering.issue import Issue

# Row states.  queued -> sending -> sent | deferred | failed | bounced; skipped when
# the subscriber left (or was suppressed) after the ledger was written; uncertain
# when a crash left the row in sending.
QUEUED, SENDING, SENT, DEFERRED, FAILED, BOUNCED, UNCERTAIN, SKIPPED = (
    "queued", "sending", "sent", "deferred", "failed", "bounced", "uncertain", "skipped")
DELIVERY_STATES = (QUEUED, SENDING, SENT, DEFERRED, FAILED, BOUNCED, UNCERTAIN, SKIPPED)
FINAL_STATES = (SENT, FAILED, BOUNCED, SKIPPED)

# Issue states: composed (recorded, no ledger yet) -> queued (ledger written) ->
# sending -> sent (every row final) or unfinished (rows left deferred/uncertain), or
# waiting (every released row final, later waves not released yet: see write_recipients).
ISSUE_STATES = ("composed", "queued", "sending", "sent", "unfinished", "waiting")


class IssueRecord(Base):
    __tablename__ = "issues"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="daily")
    date: Mapped[date] = mapped_column(Date)
    number: Mapped[int] = mapped_column(Integer)
    subject: Mapped[str] = mapped_column(String(998))
    articles: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of article slugs, lead first
    audience_topic: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(AwareDateTime())
    state: Mapped[str] = mapped_column(String(16), default="composed")
    recipients: Mapped[int | None] = mapped_column(Integer)  # ledger rows written
    lease_owner: Mapped[str | None] = mapped_column(String(200))  # host:pid of the sending process
    lease_expires_at: Mapped[datetime | None] = mapped_column(AwareDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(AwareDateTime())
    rate_next: Mapped[float | None] = mapped_column(Float)  # a shared send's next free rate slot (epoch s)


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("issue_id", "subscriber_id", name="uq_deliveries_issue_subscriber"),
        Index("ix_deliveries_issue_release", "issue_id", "release_at"),
        Index("ix_deliveries_issue_state_id", "issue_id", "state", "id"),
        Index("ix_deliveries_claimed_by", "claimed_by"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="SET NULL"))
    email: Mapped[str | None] = mapped_column(String(320))
    state: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    uncertain: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(AwareDateTime())
    last_reply: Mapped[str | None] = mapped_column(String(500))
    message_id: Mapped[str | None] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(AwareDateTime())
    # the UTC instant from which the row may be sent (its wave: migration 0010); NULL: at once
    release_at: Mapped[datetime | None] = mapped_column(AwareDateTime())
    # a shared send's node holding the row now, and the node that recorded its outcome (migration 0011)
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    sent_by: Mapped[str | None] = mapped_column(String(200))


# -- reads and writes ----------------------------------------------------------------
#
# Every statement of the send loop is here, in SQLAlchemy Core.  A batch of rows is
# claimed (checked still open and still eligible) in one transaction; then each
# message is marked ``sending`` just before its content goes to the relay, in the
# same transaction that records the outcome of the connection's previous message
# (``LedgerRun.write``; the send loop groups the writes of every connection that
# are ready at the same moment into one transaction).  So at most one row per
# connection is ever ``sending``: the most a kill can leave uncertain.

ISSUES = IssueRecord.__table__
DELIVERIES = Delivery.__table__


def released(d, now):
    """The condition "this row's wave has been released by ``now``" (the one place it is decided)."""
    return or_(d.c.release_at.is_(None), d.c.release_at <= now)


@dataclass(frozen=True)
class IssueInfo:
    id: int
    key: str
    kind: str
    date: date
    number: int
    subject: str
    articles: tuple[str, ...]
    audience_topic: str | None
    created_at: datetime
    state: str
    recipients: int | None

    @classmethod
    def of(cls, row) -> "IssueInfo":
        return cls(row.id, row.key, row.kind, row.date, row.number, row.subject, tuple(json.loads(row.articles)),
                   row.audience_topic, row.created_at, row.state, row.recipients)


@dataclass(frozen=True)
class Pending:
    """A ledger row about to be sent, with what the message needs."""

    id: int
    subscriber_id: int | None
    email: str
    name: str | None
    attempts: int
    eligible: bool  # still confirmed and not suppressed at send time


def find_issue(engine: Engine, key: str) -> IssueInfo | None:
    with engine.connect() as conn:
        row = conn.execute(select(ISSUES).where(ISSUES.c.key == key)).first()
    return IssueInfo.of(row) if row else None


def record_issue(engine: Engine, issue: Issue, subject: str) -> IssueInfo:
    """The ``issues`` row for ``issue.key``, created if missing (an existing row is
    returned unchanged: what was composed first is what gets sent)."""
    found = find_issue(engine, issue.key)
    if found is not None:
        return found
    values = dict(key=issue.key, kind=issue.kind, date=issue.date, number=issue.number, subject=subject[:998],
                  articles=json.dumps([a.slug for a in issue.articles]), audience_topic=issue.audience_topic,
                  created_at=clock.now(), state="composed")
    try:
        with engine.begin() as conn:
            conn.execute(insert(ISSUES).values(**values))
    except IntegrityError:
        pass  # another process recorded it first; use theirs
    found = find_issue(engine, issue.key)
    assert found is not None
    return found


def issue_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(ISSUES)).scalar_one()


# -- the lease: one sending process per issue -------------------------------------
#
# The sending process holds the issue's lease (``lease_owner``, a holder name unique
# to this acquisition, see pipeline/holders.py) and renews it from a heartbeat
# thread (``LeaseKeeper`` in pipeline/delivery/deliver.py) that never waits for SMTP.  Every
# write of a send run is fenced: its transaction first touches the issue row WHERE
# lease_owner is still ours.  That row lock orders it against a takeover (which
# updates the same row), so a process that lost its lease, say stalled past its
# expiry, changes nothing when it wakes and stops at once.

LEASE_SECONDS = 120.0  # the default of the lease_seconds setting


def lease_owner() -> str:
    return holders.new_holder()


def _owner_is_dead(owner: str) -> bool:
    """True when ``owner`` is a process on this host that no longer runs."""
    return holders.is_dead(owner)


SKIP_REPLY = "no longer confirmed, or suppressed, at send time"
LEASE_TAKEN = "the send lease expired and another process took the issue over"


def fence_statement(issue_id: int, owner: str):
    """The fence: a no-op update of the issue row, matching only while ``owner`` holds its lease."""
    return (update(ISSUES).where(ISSUES.c.id == issue_id, ISSUES.c.lease_owner == owner)
            .values(lease_owner=ISSUES.c.lease_owner))


def fence(conn, issue_id: int, owner: str) -> None:
    """Inside a write transaction, before its writes: raise ``LeaseLost`` unless ``owner``
    still holds the issue's lease (and keep a takeover out until the transaction ends)."""
    if conn.execute(fence_statement(issue_id, owner)).rowcount != 1:
        raise LeaseLost(LEASE_TAKEN)


def acquire_lease(engine: Engine, issue_id: int, seconds: float = LEASE_SECONDS, owner: str | None = None) -> str:
    """Take the issue's send lease, or raise ``DeliveryError`` if a live process holds it.

    A lease held by a dead process on this host is taken at once; one held from
    another host is taken only after it expires (its holder renews it while sending).
    """
    owner = owner or lease_owner()
    now = clock.now()
    with engine.begin() as conn:
        row = conn.execute(select(ISSUES.c.key, ISSUES.c.lease_owner, ISSUES.c.lease_expires_at)
                           .where(ISSUES.c.id == issue_id)).one()
        held = row.lease_owner and row.lease_owner != owner and row.lease_expires_at and row.lease_expires_at > now
        if held and not _owner_is_dead(row.lease_owner):
            raise DeliveryError(f"issue {row.key} is being sent by {row.lease_owner} (lease until "
                                f"{row.lease_expires_at.isoformat(timespec='seconds')}); not sending it twice")
        # compare-and-set on the holder just read: of two processes that read the same
        # row at the same moment, only one update matches, and the other stops here
        same_holder = (ISSUES.c.lease_owner.is_(None) if row.lease_owner is None
                       else ISSUES.c.lease_owner == row.lease_owner)
        same_expiry = (ISSUES.c.lease_expires_at.is_(None) if row.lease_expires_at is None
                       else ISSUES.c.lease_expires_at == row.lease_expires_at)
        taken = conn.execute(update(ISSUES).where(ISSUES.c.id == issue_id, same_holder, same_expiry)
                             .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=float(seconds))))
        if taken.rowcount != 1:
            raise DeliveryError(f"issue {row.key} was just taken by another process; not sending it twice")
    return owner


def lease_left(engine: Engine, issue_id: int) -> float | None:
    """Seconds until the issue's send lease runs out (negative: already out); None when nobody holds it."""
    with engine.connect() as conn:
        row = conn.execute(select(ISSUES.c.lease_owner, ISSUES.c.lease_expires_at).where(ISSUES.c.id == issue_id)).one()
    if not row.lease_owner or row.lease_expires_at is None:
        return None
    return (row.lease_expires_at - clock.now()).total_seconds()


def renew_issue_lease(engine: Engine, issue_id: int, owner: str, seconds: float) -> bool:
    """Push our lease's expiry ``seconds`` ahead; False when it is no longer ours."""
    with engine.begin() as conn:
        return conn.execute(update(ISSUES).where(ISSUES.c.id == issue_id, ISSUES.c.lease_owner == owner)
                            .values(lease_expires_at=clock.now() + timedelta(seconds=float(seconds)))).rowcount == 1


def release_lease(engine: Engine, issue_id: int, owner: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(ISSUES).where(ISSUES.c.id == issue_id, ISSUES.c.lease_owner == owner)
                     .values(lease_owner=None, lease_expires_at=None))


# -- recipients ------------------------------------------------------------------------

def _recipients_query(issue_id: int | None, frequency: str, topic: str | None, now: datetime,
                      topics: Sequence[str] = ()):
    """Confirmed, unsuppressed subscribers of ``frequency``.  With ``topic`` (an issue
    for one topic's audience): only that topic's subscribers.  Otherwise, when the
    issue's articles have ``topics``: subscribers who chose one of them, and those who
    chose no topic at all (which means "everything")."""
    from subscribers.models import Subscriber, SubscriberTopic, Suppression

    sub, sup, top = Subscriber.__table__, Suppression.__table__, SubscriberTopic.__table__
    columns = [sub.c.id, sub.c.email]
    if issue_id is not None:
        columns = [literal(issue_id, Integer), sub.c.id, sub.c.email, literal(QUEUED, String),
                   literal(0, Integer), literal(0, Integer), literal(now, AwareDateTime())]
    query = select(*columns).where(
        sub.c.status == "confirmed", sub.c.frequency == frequency,
        ~exists().where(sup.c.email_hash == sub.c.email_hash))
    if topic is not None:
        query = query.where(exists().where(top.c.subscriber_id == sub.c.id, top.c.topic == topic))
    elif topics:
        query = query.where(or_(~exists().where(top.c.subscriber_id == sub.c.id),
                                exists().where(top.c.subscriber_id == sub.c.id, top.c.topic.in_(list(topics)))))
    return query.order_by(sub.c.id)


def count_recipients(engine: Engine, frequency: str, topic: str | None = None, topics: Sequence[str] = ()) -> int:
    query = _recipients_query(None, frequency, topic, clock.now(), topics).order_by(None)
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(query.subquery())).scalar_one()


def write_recipients(engine: Engine, issue_id: int, frequency: str, topic: str | None = None,
                     topics: Sequence[str] = (), owner: str | None = None, releases=None) -> int | None:
    """Write one ``queued`` row per recipient, in SQL (INSERT ... SELECT: nothing is
    held in Python), and mark the issue ``queued``; all in one transaction, so a crash
    leaves either every row or none.  Returns the count, or None when the ledger
    was already written (the recipients are chosen once per issue).

    ``releases`` (the delivery-time waves, ``pipeline.scheduling.waves``) is called with
    the recipients' (time_zone, delivery_hour) groups, counted in SQL, and returns
    {group: UTC instant}; each row's ``release_at`` is its group's instant, by a CASE
    in the same INSERT.  Without it every row is released at once (NULL)."""
    from subscribers.delivery_time import release_column

    with engine.begin() as conn:
        if owner is not None:
            fence(conn, issue_id, owner)
        state = conn.execute(select(ISSUES.c.state).where(ISSUES.c.id == issue_id)).scalar_one()
        if state != "composed":
            return None
        query = _recipients_query(issue_id, frequency, topic, clock.now(), topics)
        columns = ["issue_id", "subscriber_id", "email", "state", "attempts", "uncertain", "updated_at"]
        release = release_column(conn, query, releases) if releases is not None else None
        if release is not None:
            query, columns = query.add_columns(release), columns + ["release_at"]
        conn.execute(insert(DELIVERIES).from_select(columns, query))
        count = conn.execute(select(func.count()).select_from(DELIVERIES)
                             .where(DELIVERIES.c.issue_id == issue_id)).scalar_one()
        conn.execute(update(ISSUES).where(ISSUES.c.id == issue_id).values(state="queued", recipients=count))
    return count


def recover_in_flight(engine: Engine, issue_id: int, policy: str, owner: str | None = None) -> int:
    """Rows left ``sending`` by a dead process become ``uncertain`` (their ``uncertain``
    counter goes up); with policy ``resend`` they are queued again.  Returns how many."""
    if policy not in ("skip", "resend"):
        raise DeliveryError(f"uncertain_policy must be 'skip' or 'resend', not {policy!r}")
    now = clock.now()
    with engine.begin() as conn:
        if owner is not None:
            fence(conn, issue_id, owner)
        found = conn.execute(update(DELIVERIES)
                             .where(DELIVERIES.c.issue_id == issue_id, DELIVERIES.c.state == SENDING)
                             .values(state=UNCERTAIN, uncertain=DELIVERIES.c.uncertain + 1, updated_at=now,
                                     last_reply="in flight when the sending process died")).rowcount
        if policy == "resend":
            conn.execute(update(DELIVERIES)
                         .where(DELIVERIES.c.issue_id == issue_id, DELIVERIES.c.state == UNCERTAIN)
                         .values(state=DEFERRED, next_attempt_at=None, updated_at=now))
    return found


def decide_uncertain(engine: Engine, issue_id: int, choice: str, owner: str | None = None) -> int:
    """The operator's decision on the rows left ``uncertain``: ``resend`` queues them again
    (deferred, due now), ``skip`` closes them as skipped (the relay probably has them).
    Returns how many."""
    if choice not in ("skip", "resend"):
        raise DeliveryError(f"--uncertain must be 'skip' or 'resend', not {choice!r}")
    now = clock.now()
    values = (dict(state=DEFERRED, next_attempt_at=None, updated_at=now) if choice == "resend" else
              dict(state=SKIPPED, updated_at=now, last_reply="uncertain; closed without resending (--uncertain skip)"))
    with engine.begin() as conn:
        if owner is not None:
            fence(conn, issue_id, owner)
        return conn.execute(update(DELIVERIES).where(DELIVERIES.c.issue_id == issue_id,
                                                     DELIVERIES.c.state == UNCERTAIN).values(**values)).rowcount


def count_in_doubt(engine: Engine, issue_id: int) -> int:
    """Rows that were ever uncertain (so may have reached someone twice if resent)."""
    with engine.connect() as conn:
        return conn.execute(select(func.count()).where(DELIVERIES.c.issue_id == issue_id,
                                                       DELIVERIES.c.uncertain > 0)).scalar_one()


def state_counts(engine: Engine, issue_id: int) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(DELIVERIES.c.state, func.count()).where(DELIVERIES.c.issue_id == issue_id)
                            .group_by(DELIVERIES.c.state)).all()
    return {state: 0 for state in DELIVERY_STATES} | dict(rows)


def max_deferred_attempts(engine: Engine, issue_id: int) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.coalesce(func.max(DELIVERIES.c.attempts), 0))
                            .where(DELIVERIES.c.issue_id == issue_id, DELIVERIES.c.state == DEFERRED)).scalar_one()


def issue_state(counts: dict[str, int], unreleased: int = 0) -> str:
    """How an issue stands from its rows (the one place it is decided): ``sent`` when
    every row is final; ``waiting`` when the only open rows are ``unreleased`` queued
    rows of later waves (nothing to alert on); else ``unfinished``."""
    if counts[DEFERRED] or counts[SENDING] or counts[UNCERTAIN] or counts[QUEUED] > unreleased:
        return "unfinished"
    return "waiting" if unreleased else "sent"


def unreleased_count(engine: Engine, issue_id: int, now: datetime) -> int:
    """Queued rows whose wave is not released by ``now``."""
    with engine.connect() as conn:
        return conn.execute(select(func.count()).where(DELIVERIES.c.issue_id == issue_id,
                                                       DELIVERIES.c.state == QUEUED,
                                                       ~released(DELIVERIES, now))).scalar_one()


def finish_issue(engine: Engine, issue_id: int, owner: str | None = None, *, fence_with=None) -> str:
    """Record the issue's state from its rows (``issue_state``); ``fence_with(conn)``
    replaces the issue lease's fence (a node of a shared send fences with its own lease)."""
    now = clock.now()
    state = issue_state(state_counts(engine, issue_id), unreleased_count(engine, issue_id, now))
    with engine.begin() as conn:
        if fence_with is not None:
            fence_with(conn)
        elif owner is not None:
            fence(conn, issue_id, owner)
        conn.execute(update(ISSUES).where(ISSUES.c.id == issue_id)
                     .values(state=state, finished_at=now if state == "sent" else None))
    return state


class LedgerRun:
    """The statements one send run repeats, prepared once."""

    def __init__(self, engine: Engine, issue_id: int, owner: str, *, fenced: bool = True,
                 lease_seconds: float = LEASE_SECONDS):
        from subscribers.models import Subscriber, Suppression

        self.engine = engine
        self.issue_id = issue_id
        self.owner = owner
        self.fenced = fenced  # False only in tests of the row-level rules without a lease
        self.lease_seconds = float(lease_seconds)
        self._renewed = clock.monotonic()
        self._fast = None  # the FastWriter of ``write``, made on first use
        sub, sup, d = Subscriber.__table__, Suppression.__table__, DELIVERIES
        eligible = and_(sub.c.status == "confirmed", ~exists().where(sup.c.email_hash == sub.c.email_hash))
        self._eligible, self._sub = eligible, sub
        base = (select(d.c.id, d.c.subscriber_id, d.c.email, sub.c.name, d.c.attempts,
                       case((eligible, 1), else_=0).label("eligible"))
                .select_from(d.outerjoin(sub, sub.c.id == d.c.subscriber_id))
                .where(d.c.issue_id == issue_id, d.c.id > bindparam("after"), released(d, bindparam("now")))
                .order_by(d.c.id).limit(bindparam("limit")))
        self._queued = base.where(d.c.state == QUEUED)
        self._deferred = base.where(d.c.state == DEFERRED, d.c.attempts < bindparam("max_attempts"),
                                    or_(d.c.next_attempt_at.is_(None), d.c.next_attempt_at <= bindparam("now")))
        self._next_due = (select(func.min(d.c.next_attempt_at), func.count())
                          .where(d.c.issue_id == issue_id, d.c.state == DEFERRED,
                                 d.c.attempts < bindparam("max_attempts")))
        self._hand = (update(d).where(d.c.id.in_(bindparam("ids", expanding=True)),
                                      d.c.state.in_((QUEUED, DEFERRED)))
                      .values(state=SENDING, updated_at=bindparam("now")).returning(d.c.id))
        self._outcome = (update(d).where(d.c.id == bindparam("row"))
                         .values(state=bindparam("new_state"), attempts=d.c.attempts + bindparam("tried"),
                                 uncertain=d.c.uncertain + bindparam("doubt"),
                                 last_reply=bindparam("reply"), message_id=bindparam("mid"),
                                 next_attempt_at=bindparam("retry_at"), updated_at=bindparam("now")))

    def _fence(self, conn) -> None:
        fence(conn, self.issue_id, self.owner)

    def _fast_statements(self) -> dict:
        """The statements of ``FastWriter`` (pipeline/delivery/fast_write.py): the fence,
        an outcome, ``n`` rows marked sending (those still open: RETURNING says which),
        a claim's check of ``n`` rows (still eligible, still open) and one row skipped;
        and the words of ``LeaseLost``."""
        d, sub, eligible = DELIVERIES, self._sub, self._eligible  # locals: the lambdas keep no cycle to self
        open_ = or_(d.c.state == QUEUED, d.c.state == DEFERRED)
        mine = self._mine()
        return {
            "fence": fence_statement(self.issue_id, self.owner) if self.fenced else None,
            "outcome": self._outcome,
            "hand": lambda n: (update(d).where(d.c.id.in_([bindparam(f"id{k}") for k in range(n)]), open_, *mine)
                               .values(state=SENDING, updated_at=bindparam("now")).returning(d.c.id)),
            "check": lambda n: (select(d.c.id, case((eligible, 1), else_=0), case((open_, 1), else_=0))
                                .select_from(d.outerjoin(sub, sub.c.id == d.c.subscriber_id))
                                .where(d.c.id.in_([bindparam(f"id{k}") for k in range(n)]))),
            "skip": update(d).where(d.c.id == bindparam("id")).values(state=SKIPPED, updated_at=bindparam("now"),
                                                                     last_reply=SKIP_REPLY),
            "lost": LEASE_TAKEN,
        }

    def _mine(self) -> list:
        """The conditions that make a row this run's to mark (none: the lease covers the issue)."""
        return []

    def _writer(self):
        if self._fast is None:
            from pipeline.delivery.fast_write import FastWriter
            self._fast = FastWriter(self.engine, self._fast_statements())
        return self._fast

    def close(self) -> None:
        """Give back the driver connection of the fast writes (the run is over)."""
        if self._fast is not None:
            self._fast.close()

    def page(self, phase: str, after: int, limit: int, max_attempts: int) -> list[Pending]:
        query = self._queued if phase == QUEUED else self._deferred
        params = {"after": after, "limit": limit, "now": clock.now()}
        if phase != QUEUED:
            params |= {"max_attempts": max_attempts}
        with self.engine.connect() as conn:
            return [Pending(r.id, r.subscriber_id, r.email, r.name, r.attempts, bool(r.eligible))
                    for r in conn.execute(query, params)]

    def next_due(self, max_attempts: int) -> tuple[datetime | None, int]:
        """Earliest retry time of the deferred rows still within ``max_attempts``, and their count."""
        with self.engine.connect() as conn:
            when, count = conn.execute(self._next_due, {"max_attempts": max_attempts}).one()
        if when is not None and when.tzinfo is None:  # min() bypasses the column type on SQLite
            when = datetime.fromisoformat(str(when)).replace(tzinfo=timezone.utc)
        return when, count

    def retry_info(self, max_attempts: int) -> tuple[int, str]:
        """The tries so far and the last reply of the deferred row due first (for the wait's schedule)."""
        d = DELIVERIES
        with self.engine.connect() as conn:
            row = conn.execute(select(d.c.attempts, d.c.last_reply)
                               .where(d.c.issue_id == self.issue_id, d.c.state == DEFERRED,
                                      d.c.attempts < max_attempts)
                               .order_by(d.c.next_attempt_at, d.c.id).limit(1)).first()
        return (row.attempts, row.last_reply or "") if row else (0, "")

    def claim(self, ids: list[int], skipped: list[int]) -> tuple[list[int], list[int]]:
        """Check a batch before any SMTP, in one transaction: (the ids still ``queued`` or
        ``deferred`` and still eligible, the ids skipped).  A subscriber who left (or
        was suppressed) since the page was read is marked skipped, not mailed; a row
        another run moved since is not ours.  Nothing is marked ``sending`` here:
        ``write`` does that per message, right before its content goes out."""
        return self._writer().claim(ids, skipped, clock.now())

    def write(self, rows: list[dict], hand: list[int] = (), bounced: list = (), settings=None) -> set[int]:
        """One fenced transaction: the outcomes ``rows`` (dicts with row, new_state, tried,
        doubt, reply, mid, retry_at), the subscribers of ``bounced`` (ids or addresses)
        made bounced and suppressed, and the rows ``hand`` marked ``sending``.  Returns
        the ids of ``hand`` now marked (a row no longer open is not).  Raises
        ``LeaseLost``, with nothing written, when the lease has passed to another process.

        The bounce and its suppression are in the same transaction as the ``bounced``
        state, so a kill can never leave one without the other."""
        now = clock.now()
        for row in rows:
            row["now"] = now
        if not bounced:  # the ledger alone: straight on the driver (pipeline/delivery/fast_write.py)
            return self._writer().write(rows, hand, now)
        marked: set[int] = set()
        with self.engine.begin() as conn:
            if self.fenced:
                self._fence(conn)
            if rows:
                conn.execute(self._outcome, rows)
            if bounced:
                from sqlalchemy.orm import Session
                from subscribers import store
                with Session(bind=conn) as session:  # joins this transaction
                    for who in bounced:
                        store.leave_in(session, settings, who, "bounced", method="system")
                    session.flush()
            if hand:
                marked = set(conn.execute(self._hand, {"ids": list(hand), "now": now}).scalars())
        return marked

    def record(self, rows: list[dict]) -> bool:
        """``write`` of outcomes alone; False, with nothing written, when the lease is lost."""
        for row in rows:
            row.setdefault("doubt", 0)
        try:
            self.write(rows)
        except LeaseLost:
            return False
        return True

    def renew_lease(self, conn=None, now: datetime | None = None) -> bool:
        """Push the lease's expiry ``lease_seconds`` ahead.  Only our own lease: False
        when another process took it over after it expired (this run must stop, never
        take it back while the other one sends)."""
        ours = renew_issue_lease(self.engine, self.issue_id, self.owner, self.lease_seconds)
        self._renewed = clock.monotonic()
        return ours
