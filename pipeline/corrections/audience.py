"""Who gets a correction or retraction notice, written to the send ledger.

Everyone the ledger shows received an issue carrying the article (a ``sent`` row, or
an ``uncertain`` one: it may have reached them), once per person however many issues
carried it, less those who have since unsubscribed, bounced or complained (no longer
``confirmed``), are suppressed, or were erased (their rows no longer name them).
Notices themselves (issues of kind ``correction``) do not count as carrying it.

The rows are written as an issue's are: in one INSERT ... SELECT, in one transaction
that also moves the notice's issue from ``composed`` to ``queued``, so a crash leaves
every row or none, and a second run (or a concurrent one) writes nothing.  From there
``pipeline.delivery.deliver.send_issue`` sends them exactly as it sends an issue's.
"""
from __future__ import annotations

import json

from sqlalchemy import Engine, Integer, String, and_, exists, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError

from pipeline import clock
from pipeline.database import AwareDateTime
from pipeline.delivery import ledger
from pipeline.corrections.notice_mail import KIND

RECEIVED = (ledger.SENT, ledger.UNCERTAIN)


def carrying_issues(engine: Engine, slug: str) -> list[int]:
    """Ids of the issues (not notices) whose articles include ``slug``."""
    issues = ledger.ISSUES
    with engine.connect() as conn:
        rows = conn.execute(select(issues.c.id, issues.c.articles).where(issues.c.kind != KIND)).all()
    return [r.id for r in rows if slug in json.loads(r.articles or "[]")]


def _audience(issue_ids: list[int]):
    from subscribers.models import Subscriber, Suppression

    sub, sup, d = Subscriber.__table__, Suppression.__table__, ledger.DELIVERIES
    received = select(d.c.subscriber_id).where(d.c.issue_id.in_(issue_ids), d.c.state.in_(RECEIVED),
                                               d.c.subscriber_id.is_not(None))
    return sub, and_(sub.c.id.in_(received), sub.c.status == "confirmed",
                     ~exists().where(sup.c.email_hash == sub.c.email_hash))


def count_audience(engine: Engine, slug: str) -> int:
    ids = carrying_issues(engine, slug)
    if not ids:
        return 0
    sub, where = _audience(ids)
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(sub).where(where)).scalar_one()


def write_audience(engine: Engine, notice_issue_id: int, slug: str) -> int | None:
    """Write the notice's ledger rows; the count, or None when they were written already."""
    ids = carrying_issues(engine, slug)
    now = clock.now()
    issues, d = ledger.ISSUES, ledger.DELIVERIES
    try:
        with engine.begin() as conn:
            state = conn.execute(select(issues.c.state).where(issues.c.id == notice_issue_id)).scalar_one()
            if state != "composed":
                return None
            count = 0
            if ids:
                sub, where = _audience(ids)
                query = select(literal(notice_issue_id, Integer), sub.c.id, sub.c.email, literal(ledger.QUEUED, String),
                               literal(0, Integer), literal(0, Integer), literal(now, AwareDateTime())
                               ).where(where).order_by(sub.c.id)
                conn.execute(insert(d).from_select(
                    ["issue_id", "subscriber_id", "email", "state", "attempts", "uncertain", "updated_at"], query))
                count = conn.execute(select(func.count()).select_from(d)
                                     .where(d.c.issue_id == notice_issue_id)).scalar_one()
            moved = conn.execute(update(issues).where(issues.c.id == notice_issue_id, issues.c.state == "composed")
                                 .values(state="queued", recipients=count)).rowcount
            if moved != 1:
                raise IntegrityError("notice ledger written by another process", None, Exception())
    except IntegrityError:
        return None  # another process wrote them first; theirs stand
    return count
