"""Several sender nodes share one send (PostgreSQL): nodes, claims, the shared rate.

Every process that sends an issue on PostgreSQL joins it as a *node*: a row in
``send_nodes`` with a lease of its own (``expires_at``, renewed by the node's
heartbeat thread, ``pipeline.delivery.send_guard``, which never waits on SMTP).
The first node also holds the issue's lease (``issues.lease_owner``) and does the
issue-level steps before any row is claimed: it recovers the rows of dead nodes,
applies the operator's ``--uncertain`` decision and writes the recipients.

- **A claim.** A node takes a batch of due ledger rows in one statement,
  ``UPDATE deliveries SET claimed_by = node WHERE id IN (SELECT ... FOR UPDATE SKIP
  LOCKED)``: two nodes never take the same row, and neither waits for the other.
  The row is then marked ``sending`` and recorded by that node only
  (``SharedLedgerRun``: every statement names ``claimed_by = node``), and its
  outcome clears the claim and names the node in ``sent_by``.
- **The fence.** Every write transaction of a node first touches its own
  ``send_nodes`` row WHERE it is still live.  Taking a dead node's rows back
  (``reap``) marks that row left in the same transaction, on the same row lock,
  so the two are ordered: a node whose claim was taken back changes nothing
  (``LeaseLost``) and stops.
- **A dead node.** Its lease expires (one on this host whose process is gone
  is taken at once); ``reap`` then returns its claimed rows to the queue, and its
  ``sending`` rows (at most one per connection) become uncertain under
  ``uncertain_policy``, as after any crash.  Every node reaps when it finds
  nothing to claim while other nodes still hold rows, so the survivors finish the
  send.  A node ends only when nothing is due and no live node holds a row.
- **The rate.** ``smtp_rate_limit`` is the issue's, not each node's: ``SharedRate``
  advances ``issues.rate_next`` (the next free slot, in epoch seconds) by a block of
  slots in one ``UPDATE ... RETURNING`` and spaces its own messages inside it.

SQLite keeps one sender per issue (``sharing`` decides, from the ``send_nodes``
setting and the database).
"""
from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (Engine, ForeignKey, Integer, String, UniqueConstraint, and_, bindparam, case, exists,
                        func, insert, or_, select, update)
from sqlalchemy.orm import Mapped, mapped_column

from pipeline import clock, holders
from pipeline.database import AwareDateTime, Base
from pipeline.delivery import ledger
from pipeline.delivery.ledger import DEFERRED, DELIVERIES, ISSUES, QUEUED, SENDING, SKIPPED, UNCERTAIN, Pending
from pipeline.errors import DeliveryError, LeaseLost

MODES = ("auto", "single", "share")
NEEDS_POSTGRES = ("send_nodes is 'share' but the database is SQLite: several sender nodes share a send only on "
                  "PostgreSQL (set DATABASE_URL=postgresql://..., or send_nodes to auto or single)")
NODE_LOST = "this node's claims expired and the other nodes took its rows back"


class SendNode(Base):
    __tablename__ = "send_nodes"
    __table_args__ = (UniqueConstraint("issue_id", "node", name="uq_send_nodes_issue_node"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    node: Mapped[str] = mapped_column(String(200))
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    joined_at: Mapped[datetime] = mapped_column(AwareDateTime())
    expires_at: Mapped[datetime] = mapped_column(AwareDateTime())
    left_at: Mapped[datetime | None] = mapped_column(AwareDateTime())
    ended: Mapped[str | None] = mapped_column(String(16))  # done | expired


NODES = SendNode.__table__


# -- the mode ------------------------------------------------------------------------------------

def sharing(settings, engine: Engine) -> bool:
    """Does this process share sends with other nodes?  ``send_nodes``: ``auto`` (on
    PostgreSQL yes, on SQLite no), ``single`` (never: one sender per issue, the others
    wait) or ``share`` (yes; on SQLite a one-line ``DeliveryError``)."""
    mode = str(settings.send_nodes or "auto").strip().lower()
    if mode not in MODES:
        raise DeliveryError(f"send_nodes must be one of {', '.join(MODES)}, not {settings.send_nodes!r}")
    postgres = engine.dialect.name == "postgresql"
    if mode == "share" and not postgres:
        raise DeliveryError(NEEDS_POSTGRES)
    return postgres and mode != "single"


# -- nodes ---------------------------------------------------------------------------------------

def join(engine: Engine, issue_id: int, node: str, seconds: float) -> None:
    now = clock.now()
    host, pid, _ = holders.parse(node)
    with engine.begin() as conn:
        conn.execute(insert(NODES).values(issue_id=issue_id, node=node, host=host or socket.gethostname(),
                                          pid=pid or os.getpid(), joined_at=now,
                                          expires_at=now + timedelta(seconds=float(seconds))))


def renew(engine: Engine, issue_id: int, node: str, seconds: float) -> bool:
    """Push the node's lease ahead; False once it was reaped (the node must stop)."""
    with engine.begin() as conn:
        return conn.execute(update(NODES).where(NODES.c.issue_id == issue_id, NODES.c.node == node,
                                                NODES.c.left_at.is_(None))
                            .values(expires_at=clock.now() + timedelta(seconds=float(seconds)))).rowcount == 1


def fence_node_statement(issue_id: int, node: str):
    """A node's fence: a no-op update of its ``send_nodes`` row, matching only while it is live."""
    return (update(NODES).where(NODES.c.issue_id == issue_id, NODES.c.node == node, NODES.c.left_at.is_(None))
            .values(node=NODES.c.node))


def fence_node(conn, issue_id: int, node: str) -> None:
    """Inside a write transaction, first: ``LeaseLost`` unless the node is still live
    (and no ``reap`` of it can commit until this transaction ends)."""
    if conn.execute(fence_node_statement(issue_id, node)).rowcount != 1:
        raise LeaseLost(NODE_LOST)


def leave(engine: Engine, issue_id: int, node: str) -> None:
    """The node is done: its row says so, and rows it claimed but never started go back."""
    with engine.begin() as conn:
        mine = conn.execute(update(NODES).where(NODES.c.issue_id == issue_id, NODES.c.node == node,
                                                NODES.c.left_at.is_(None))
                            .values(left_at=clock.now(), ended="done")).rowcount
        if mine:
            conn.execute(update(DELIVERIES).where(DELIVERIES.c.issue_id == issue_id, DELIVERIES.c.claimed_by == node,
                                                  DELIVERIES.c.state.in_((QUEUED, DEFERRED)))
                         .values(claimed_by=None))


def reap(engine: Engine, issue_id: int, policy: str, *, orphans: bool = False) -> int:
    """Take back the rows of nodes whose lease expired (or whose process on this host is
    gone), and any a node kept when it left: claimed rows return to the queue,
    ``sending`` ones become uncertain (``resend``: deferred, due now; ``skip``: left
    uncertain).  ``orphans`` also
    recovers ``sending`` rows that no node claims (left by a single-node send); only
    the issue's lease holder passes it, before any row is claimed.  Returns the rows
    made uncertain."""
    if policy not in ("skip", "resend"):
        raise DeliveryError(f"uncertain_policy must be 'skip' or 'resend', not {policy!r}")
    now = clock.now()
    d = DELIVERIES
    with engine.begin() as conn:
        live = conn.execute(select(NODES.c.node, NODES.c.expires_at)
                            .where(NODES.c.issue_id == issue_id, NODES.c.left_at.is_(None))).all()
        gone_here = [r.node for r in live if holders.is_dead(r.node)]
        expired = [r.node for r in live if r.expires_at < now]
        if gone_here or expired:
            conn.execute(update(NODES).where(NODES.c.issue_id == issue_id, NODES.c.left_at.is_(None),
                                             or_(NODES.c.node.in_(gone_here), and_(NODES.c.node.in_(expired),
                                                                                   NODES.c.expires_at < now)))
                         .values(left_at=now, ended="expired"))
        # gone nodes, and any node that left with rows still claimed (an error ended its run
        # between a row's mark and its outcome: it never comes back for them), are dead to the send
        left = list(conn.execute(select(NODES.c.node).where(NODES.c.issue_id == issue_id,
                                                            NODES.c.left_at.is_not(None))).scalars())
        whose = [d.c.claimed_by.in_(left)] if left else []
        if orphans:
            whose.append(d.c.claimed_by.is_(None))
        if not whose:
            return 0
        found = conn.execute(
            update(d).where(d.c.issue_id == issue_id, d.c.state == SENDING, or_(*whose))
            .values(state=DEFERRED if policy == "resend" else UNCERTAIN, uncertain=d.c.uncertain + 1,
                    claimed_by=None, next_attempt_at=None, updated_at=now,
                    last_reply="uncertain: in flight when its sending node died")).rowcount
        if left:
            conn.execute(update(d).where(d.c.issue_id == issue_id, d.c.claimed_by.in_(left),
                                         d.c.state.in_((QUEUED, DEFERRED))).values(claimed_by=None))
    return found


def live_nodes(engine: Engine, issue_ids: list[int] | None = None) -> dict[int, list[str]]:
    """The live nodes (not left, lease unexpired, process not gone) of each issue being
    sent now, or of ``issue_ids``: {issue id: [node, ...]}.  The one place that decides
    "a node is still in this send" (``stop``, ``pause``, ``status`` and a signalled node)."""
    query = select(NODES.c.issue_id, NODES.c.node).where(NODES.c.left_at.is_(None), NODES.c.expires_at > clock.now())
    if issue_ids is not None:
        query = query.where(NODES.c.issue_id.in_(issue_ids))
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(NODES.c.id)).all()
    found: dict[int, list[str]] = {}
    for r in rows:
        if not holders.is_dead(r.node):
            found.setdefault(r.issue_id, []).append(r.node)
    return found


def held_by_others(engine: Engine, issue_id: int, node: str) -> int:
    """Rows other nodes hold now (claimed, outcome not yet recorded)."""
    d = DELIVERIES
    with engine.connect() as conn:
        return conn.execute(select(func.count()).where(d.c.claimed_by.is_not(None), d.c.claimed_by != node,
                                                       d.c.issue_id == issue_id)).scalar_one()


@dataclass(frozen=True)
class NodeShare:
    """One node of an issue's send, for ``newsletter status``."""

    node: str
    host: str
    pid: int
    joined_at: datetime
    live: bool
    ended: str | None
    sent: int
    holding: int


def shares(engine: Engine, issue_ids: list[int]) -> dict[int, list[NodeShare]]:
    """Each issue's nodes, with the rows each sent and holds now (from the ledger)."""
    if not issue_ids:
        return {}
    d = DELIVERIES
    now = clock.now()
    with engine.connect() as conn:
        nodes = conn.execute(select(NODES).where(NODES.c.issue_id.in_(issue_ids)).order_by(NODES.c.joined_at)).all()
        sent = dict(((r.issue_id, r.sent_by), r.n) for r in conn.execute(
            select(d.c.issue_id, d.c.sent_by, func.count().label("n"))
            .where(d.c.issue_id.in_(issue_ids), d.c.state == ledger.SENT, d.c.sent_by.is_not(None))
            .group_by(d.c.issue_id, d.c.sent_by)))
        holding = dict(((r.issue_id, r.claimed_by), r.n) for r in conn.execute(
            select(d.c.issue_id, d.c.claimed_by, func.count().label("n"))
            .where(d.c.issue_id.in_(issue_ids), d.c.claimed_by.is_not(None))
            .group_by(d.c.issue_id, d.c.claimed_by)))
    found: dict[int, list[NodeShare]] = {}
    for r in nodes:
        live = r.left_at is None and r.expires_at > now and not holders.is_dead(r.node)
        found.setdefault(r.issue_id, []).append(NodeShare(
            r.node, r.host, r.pid, r.joined_at, live, r.ended, sent.get((r.issue_id, r.node), 0),
            holding.get((r.issue_id, r.node), 0)))
    return found


# -- the ledger statements of a node ---------------------------------------------------------------

class SharedLedgerRun(ledger.LedgerRun):
    """``LedgerRun`` for a node of a shared send: claims by ``SKIP LOCKED``, every
    write fenced by the node's own lease and limited to the rows it claimed."""

    def __init__(self, engine: Engine, issue_id: int, node: str, *, lease_seconds: float = ledger.LEASE_SECONDS):
        super().__init__(engine, issue_id, node, lease_seconds=lease_seconds)
        from subscribers.models import Subscriber, Suppression

        sub, sup, d = Subscriber.__table__, Suppression.__table__, DELIVERIES
        self._hand = (update(d).where(d.c.id.in_(bindparam("ids", expanding=True)), d.c.claimed_by == node,
                                      d.c.state.in_((QUEUED, DEFERRED)))
                      .values(state=SENDING, updated_at=bindparam("now")).returning(d.c.id))
        self._outcome = (update(d).where(d.c.id == bindparam("row"), d.c.claimed_by == node)
                         .values(state=bindparam("new_state"), attempts=d.c.attempts + bindparam("tried"),
                                 uncertain=d.c.uncertain + bindparam("doubt"),
                                 last_reply=bindparam("reply"), message_id=bindparam("mid"),
                                 next_attempt_at=bindparam("retry_at"), updated_at=bindparam("now"),
                                 claimed_by=None, sent_by=node))
        self._skip_claimed = (update(d).where(d.c.id.in_(bindparam("ids", expanding=True)), d.c.claimed_by == node)
                              .values(state=SKIPPED, updated_at=bindparam("now"), claimed_by=None, sent_by=node,
                                      last_reply=ledger.SKIP_REPLY))
        self._d, self._sub = d, sub
        self._eligible = and_(sub.c.status == "confirmed", ~exists().where(sup.c.email_hash == sub.c.email_hash))

    def _fence(self, conn) -> None:
        fence_node(conn, self.issue_id, self.owner)

    def _mine(self) -> list:
        return [self._d.c.claimed_by == self.owner]  # only the rows this node claimed

    def _fast_statements(self) -> dict:
        return super()._fast_statements() | {"fence": fence_node_statement(self.issue_id, self.owner),
                                             "lost": NODE_LOST}

    def claim_batch(self, phase: str, limit: int, max_attempts: int) -> tuple[list[Pending], int]:
        """Claim up to ``limit`` due rows of ``phase`` (queued, or deferred and due) in one
        fenced transaction: (the rows to send, how many were skipped because their
        subscriber left or was suppressed).  ``LeaseLost`` when this node was reaped."""
        d, sub = self._d, self._sub
        now = clock.now()
        due = (d.c.state == QUEUED if phase == QUEUED else
               and_(d.c.state == DEFERRED, d.c.attempts < max_attempts,
                    or_(d.c.next_attempt_at.is_(None), d.c.next_attempt_at <= now)))
        pick = (select(d.c.id).where(d.c.issue_id == self.issue_id, due, d.c.claimed_by.is_(None),
                                     ledger.released(d, now))
                .order_by(d.c.id).limit(limit).with_for_update(skip_locked=True))
        taken = (update(d).where(d.c.id.in_(pick.scalar_subquery())).values(claimed_by=self.owner)
                 .returning(d.c.id, d.c.subscriber_id, d.c.email, d.c.attempts).cte("taken"))
        read = (select(taken.c.id, taken.c.subscriber_id, taken.c.email, taken.c.attempts, sub.c.name,
                       case((self._eligible, 1), else_=0).label("eligible"))
                .select_from(taken.outerjoin(sub, sub.c.id == taken.c.subscriber_id)).order_by(taken.c.id))
        with self.engine.begin() as conn:
            self._fence(conn)
            rows = [Pending(r.id, r.subscriber_id, r.email, r.name, r.attempts, bool(r.eligible))
                    for r in conn.execute(read)]
            skipped = [r.id for r in rows if not r.eligible]
            if skipped:
                conn.execute(self._skip_claimed, {"ids": skipped, "now": now})
        return [r for r in rows if r.eligible], len(skipped)


# -- the shared rate limit ---------------------------------------------------------------------

class SharedRate:
    """``smtp_rate_limit`` for the issue, whatever the number of nodes: a node books a
    block of ``block`` slots (1/rate apart) from ``issues.rate_next`` in one
    ``UPDATE ... RETURNING`` and sends each message at its slot."""

    def __init__(self, engine: Engine, issue_id: int, rate: float, block: int | None = None):
        self.engine, self.issue_id, self.rate = engine, issue_id, float(rate)
        self.block = block or max(1, int(self.rate / 10))  # 100 ms of the rate at a time
        self._slots: list[float] = []
        self._lock = asyncio.Lock()
        self._book = (update(ISSUES).where(ISSUES.c.id == issue_id)
                      .values(rate_next=func.greatest(func.coalesce(ISSUES.c.rate_next, bindparam("now")),
                                                      bindparam("now")) + bindparam("span"))
                      .returning(ISSUES.c.rate_next))

    def book(self) -> list[float]:
        """The next block of slots (epoch seconds), booked for this node."""
        span = self.block / self.rate
        with self.engine.begin() as conn:
            end = conn.execute(self._book, {"now": time.time(), "span": span}).scalar_one()
        start = end - span
        return [start + i / self.rate for i in range(self.block)]

    async def take(self) -> None:
        async with self._lock:  # the node's connections share its booked slots
            if not self._slots:
                self._slots = await asyncio.to_thread(self.book)
            slot = self._slots.pop(0)
        wait = slot - time.time()
        if wait > 0:
            await asyncio.sleep(wait)

