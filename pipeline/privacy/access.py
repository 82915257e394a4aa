"""One-time links for the data rights: export everything held, or erase it.

The preferences link in every issue lives for ever and travels with forwarded
mail, so it can change topics and frequency and unsubscribe, nothing more.  To
export or erase, the person asks for a fresh link from the preferences page; it
is emailed to the subscribed address (through the mail queue), works for
``data_link_minutes`` and for one action only: ``use`` marks it spent by
compare-and-set in the same transaction as the export is read.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine, select, update

from pipeline import clock
from pipeline.database import transaction
from pipeline.errors import SubscriberError
from subscribers import limits, mailqueue, messages, store
from subscribers.models import AccessLink, Subscriber
from pipeline.privacy import rights

LINKS_PER_HOUR = 3  # per subscriber: the emails go to their own address


@dataclass(frozen=True)
class Link:
    id: int
    subscriber: store.SubscriberInfo


def lifetime(settings) -> timedelta:
    return timedelta(minutes=int(settings.data_link_minutes))


def request_link(engine: Engine, settings, subscriber_id: int) -> bool:
    """Queue an email with a new one-time link; False when the hourly limit is reached."""
    at = clock.now()
    with transaction(engine) as s:
        sub = s.get(Subscriber, subscriber_id)
        if sub is None:
            raise SubscriberError("no such subscriber")
        if not limits.take(s, f"data-link:{sub.id}", LINKS_PER_HOUR, timedelta(hours=1), at):
            return False
        link = AccessLink(subscriber_id=sub.id, created_at=at, expires_at=at + lifetime(settings))
        s.add(link)
        s.flush()
        mailqueue.enqueue(s, messages.data_link_message(settings, store._info(sub), link.id,
                                                        int(settings.data_link_minutes)),
                          kind="data-link", subscriber_id=sub.id)
        return True


def _check(row: AccessLink | None, at) -> None:
    if row is None:
        raise SubscriberError("this link is no longer valid")
    if row.used_at is not None:
        raise SubscriberError("this link has already been used; please ask for a new one")
    if row.expires_at <= at:
        raise SubscriberError("this link has expired; please ask for a new one")


def open_link(engine: Engine, link_id: int) -> Link:
    """The link's subscriber, if the link is unused and in time (nothing is spent)."""
    with transaction(engine) as s:
        row = s.get(AccessLink, link_id)
        _check(row, clock.now())
        sub = s.get(Subscriber, row.subscriber_id)
        return Link(row.id, store._info(sub))


def use(session, link_id: int) -> int:
    """Spend the link inside the caller's transaction; the subscriber id, or ``SubscriberError``."""
    at = clock.now()
    table = AccessLink.__table__
    row = session.scalar(select(AccessLink).where(AccessLink.id == link_id))
    _check(row, at)
    won = session.execute(update(table).where(table.c.id == link_id, table.c.used_at.is_(None))
                          .values(used_at=at)).rowcount
    if won != 1:
        raise SubscriberError("this link has already been used; please ask for a new one")
    return row.subscriber_id


def export_once(engine: Engine, settings, link_id: int) -> dict:
    with transaction(engine) as s:
        sid = use(s, link_id)
    data = rights.export_data(engine, settings, sid)
    if data is None:
        raise SubscriberError("this link is no longer valid")
    return data


def erase_once(engine: Engine, settings, link_id: int) -> None:
    with transaction(engine) as s:
        sid = use(s, link_id)
    rights.erase(engine, settings, sid, method="web")
