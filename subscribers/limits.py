"""Rate limits kept in the database, so every web process shares them.

Each limit is a fixed-window counter in ``rate_limits``: at most ``limit``
events per ``window`` for a key.  ``take`` counts one event and says whether it
is allowed, with compare-and-set statements only, so two processes can never
both take the last slot:

1. ``UPDATE ... SET count = count + 1 WHERE key = k AND window_end > now AND count < limit``
2. else ``UPDATE ... SET count = 1, window_start = now ... WHERE key = k AND window_end <= now``
   (the old window is over)
3. else ``INSERT`` the key, which loses on the primary key if another writer got there first;
   then step 1 once more, against the row that writer made.

Keys: client IPs are counted per IPv4 address (/32) and per IPv6 /64, since one
IPv6 host is usually given a whole /64; addresses are counted by their keyed hash
(``subscribers.tokens.email_hash``), never in clear.
"""
from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta

from sqlalchemy import delete, update

from pipeline import clock
from subscribers.conflicts import insert_ignore
from subscribers.models import RateLimit


def ip_bucket(ip: str | None) -> str:
    """The block a client address is counted in: ``v4:a.b.c.d`` or ``v6:prefix/64``."""
    try:
        addr = ipaddress.ip_address((ip or "").split("%")[0])
    except ValueError:
        return "other:" + (ip or "unknown")[:64]
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if isinstance(addr, ipaddress.IPv4Address):
        return f"v4:{addr}"
    return f"v6:{ipaddress.IPv6Network((addr, 64), strict=False)}"


def take(session, key: str, limit: int, window: timedelta, at: datetime | None = None) -> bool:
    """Count one event for ``key``; True if it is within ``limit`` per ``window``.

    Runs inside the caller's transaction, so an event whose transaction rolls back
    is not counted.  ``limit`` <= 0 means no limit."""
    if limit <= 0:
        return True
    at = at or clock.now()
    table = RateLimit.__table__
    bump = (update(table).where(table.c.key == key, table.c.window_end > at, table.c.count < limit)
            .values(count=table.c.count + 1))
    if session.execute(bump).rowcount == 1:
        return True
    renewed = session.execute(update(table).where(table.c.key == key, table.c.window_end <= at)
                              .values(count=1, window_start=at, window_end=at + window))
    if renewed.rowcount == 1:
        return True
    if insert_ignore(session, table, {"key": key, "count": 1, "window_start": at, "window_end": at + window},
                     ["key"]):
        return True
    # Another writer created the key first (its insert has committed by now: ours waited for it).
    # That took one slot, not all of them: count this event against the row it made. Without
    # this, a burst from a new client would get one event through instead of ``limit``.
    return session.execute(bump).rowcount == 1


def prune(session, at: datetime | None = None) -> int:
    """Drop counters whose window is over (they would be renewed anyway)."""
    table = RateLimit.__table__
    return session.execute(delete(table).where(table.c.window_end <= (at or clock.now()))).rowcount
