"""What the send ledger says about past issues, read for the scheduler and `status`.

- ``issue_key`` and ``issue_number``: a day's issue key, and its number in date order;
- ``sent_slugs``: the articles already sent in a daily issue (calendar or ledger);
- ``ledger_counts``: per issue, the ledger's rows by outcome now (bounces come later);
- ``settle_from_ledger``: runs that alerted but whose issue an editor has since sent
  by hand (`newsletter send`) are recorded sent.
"""
from __future__ import annotations

import json
import logging
from datetime import date
from typing import Sequence

from sqlalchemy import Engine, func, select

from pipeline.scheduling import calendar
from pipeline.delivery import ledger
from pipeline.scheduling.calendar import Run
from pipeline.database import transaction
from pipeline.rendering.issue import issue_key as key_of
from pipeline.delivery.ledger import IssueRecord

log = logging.getLogger("newsletter.schedule")


def issue_key(day: date, kind: str) -> str:
    """The key the ledger and the archive use for the day's general issue of ``kind``."""
    return key_of(day, kind)


def issue_number(engine: Engine, day: date, kind: str) -> int:
    """Issues are numbered per kind in date order, as the ledger has them: a day the
    ledger already knows (a retry) keeps its number, a new one follows the issues
    of earlier days (whether the daemon or `newsletter send` sent them)."""
    with transaction(engine) as session:
        known = session.scalar(select(IssueRecord.number).where(IssueRecord.key == issue_key(day, kind)))
        if known is not None:
            return int(known)
        before = session.scalar(select(func.max(IssueRecord.number)).where(
            IssueRecord.kind == kind, IssueRecord.date < day, IssueRecord.audience_topic.is_(None)))
    return int(before or 0) + 1


def sent_slugs(engine: Engine) -> set[str]:
    """Articles already sent in a daily issue: on the calendar as sent, or in the
    ledger (an issue sent by hand with `newsletter send` counts too)."""
    slugs = calendar.sent_slugs(engine)
    with transaction(engine) as session:
        # an issue for one topic's audience does not take its article from everyone else
        for articles in session.scalars(select(IssueRecord.articles).where(
                IssueRecord.kind == "daily", IssueRecord.state != "composed", IssueRecord.audience_topic.is_(None))):
            slugs.update(json.loads(articles or "[]"))
    return slugs


def ledger_counts(engine: Engine, keys: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per issue key, the ledger's rows by outcome now: bounces arrive after the run
    ended, so `status` reads them here rather than from the run."""
    found: dict[str, dict[str, int]] = {}
    if not keys:
        return found
    with transaction(engine) as session:
        rows = session.execute(
            select(ledger.IssueRecord.key, ledger.Delivery.state, func.count())
            .join(ledger.Delivery, ledger.Delivery.issue_id == ledger.IssueRecord.id)
            .where(ledger.IssueRecord.key.in_(list(keys)))
            .group_by(ledger.IssueRecord.key, ledger.Delivery.state)).all()
    for key, state, count in rows:
        counts = found.setdefault(key, {"sent": 0, "deferred": 0, "failed": 0, "bounced": 0})
        if state == ledger.SENT:
            counts["sent"] += count
        elif state in (ledger.DEFERRED, ledger.QUEUED, ledger.SENDING, ledger.UNCERTAIN):
            counts["deferred"] += count
        elif state == ledger.FAILED:
            counts["failed"] += count
        elif state == ledger.BOUNCED:
            counts["bounced"] += count
    return found


def settle_from_ledger(engine: Engine) -> list[Run]:
    """Runs that ended in a content error, a failure or a stop, whose issue an editor has since
    sent by hand (`newsletter send`) to the end: record them sent, with the ledger's
    counts, and mark the day's articles sent, so `status` stops alerting."""
    settled = []
    for run in calendar.recent_runs(engine, 30):
        if run.state not in calendar.ALERT + ("stopped", "waiting"):
            continue
        key = issue_key(run.day, run.kind)
        with transaction(engine) as session:
            record = session.execute(select(IssueRecord.state, IssueRecord.articles)
                                     .where(IssueRecord.key == key)).first()
        if record is None or record.state != "sent":
            continue
        counts = ledger_counts(engine, [key]).get(key, {})
        note = f"sent by hand after {run.state}: {run.error or ''}".strip()
        done = calendar.settle_run(engine, run, "sent", issue_key=key, counts=counts, error=note)
        if done is None:
            continue
        if run.kind == "daily":
            slugs = set(json.loads(record.articles or "[]"))
            calendar.mark_entries(engine, [e.id for e in calendar.scheduled_on(engine, run.day) if e.slug in slugs],
                                  "sent", key)
        log.info("%s issue of %s was sent by hand; recorded as sent", run.kind, run.day.isoformat())
        settled.append(done)
    return settled

