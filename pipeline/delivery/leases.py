"""Leases and heartbeats, in the database: who may send, and which daemons are alive.

- ``Lease``: a named lock with an expiry, shared by every daemon on the database.
  A crashed holder stops renewing it, so it frees itself after ``lease_seconds``;
  one held by a dead process on this host is taken over at once.
- ``Heartbeat``: one row per running daemon, for ``newsletter status``.

The schema is created by migration 0003.  Every function here takes an engine
and commits its own short statement, so every process sees the others' changes
at once.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterator

from sqlalchemy import Engine, Integer, String, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from pipeline import clock
from pipeline import holders
from pipeline.database import AwareDateTime, Base

log = logging.getLogger("newsletter.schedule")


class Lease(Base):
    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(AwareDateTime())


class Heartbeat(Base):
    __tablename__ = "heartbeats"

    holder: Mapped[str] = mapped_column(String(200), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(AwareDateTime())
    last_seen: Mapped[datetime] = mapped_column(AwareDateTime())


@dataclass(frozen=True)
class Daemon:
    holder: str
    pid: int
    host: str
    started_at: datetime
    last_seen: datetime


def new_holder() -> str:
    """A name for this process in leases and heartbeats (see pipeline/holders.py)."""
    return holders.new_holder()


# -- the lease ------------------------------------------------------------------------------

SEND_LEASE = "send"


def acquire(engine: Engine, name: str, holder: str, seconds: float) -> bool:
    """Take or renew the lease ``name`` for ``seconds``; False when someone else holds it.

    One compare-and-set UPDATE (free when expired, or already ours), else an INSERT
    that loses cleanly on the primary key if another process inserted first.  Both
    are single statements, so this is atomic on SQLite and PostgreSQL alike.
    """
    now = clock.now()
    expires = now + timedelta(seconds=seconds)
    with engine.begin() as conn:
        result = conn.execute(update(Lease).where(Lease.name == name, or_(Lease.expires_at < now, Lease.holder == holder))
                              .values(holder=holder, expires_at=expires))
        if result.rowcount == 1:
            return True
        current = conn.execute(select(Lease.holder).where(Lease.name == name)).scalar()
        if current is not None and holders.is_dead(current):
            # its holder was on this host and is gone (kill -9): no need to wait for the expiry.
            # Compare-and-set on that dead holder, so of two daemons only one takes it.
            log.info("lease %s: holder %s is dead; taking it over at once", name, current)
            return conn.execute(update(Lease).where(Lease.name == name, Lease.holder == current)
                                .values(holder=holder, expires_at=expires)).rowcount == 1
    if current is not None:
        return False
    try:
        with engine.begin() as conn:
            conn.execute(insert(Lease).values(name=name, holder=holder, expires_at=expires))
        return True
    except IntegrityError:
        return False


def renew(engine: Engine, name: str, holder: str, seconds: float) -> bool:
    """Extend our own lease; False if it is no longer ours (we were too slow and lost it)."""
    expires = clock.now() + timedelta(seconds=seconds)
    with engine.begin() as conn:
        result = conn.execute(update(Lease).where(Lease.name == name, Lease.holder == holder)
                              .values(expires_at=expires))
        return result.rowcount == 1


def release(engine: Engine, name: str, holder: str) -> None:
    with engine.begin() as conn:
        conn.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))


def lease_holder(engine: Engine, name: str) -> tuple[str, datetime] | None:
    with engine.begin() as conn:
        row = conn.execute(select(Lease.holder, Lease.expires_at).where(Lease.name == name)).first()
    if row is None or row.expires_at < clock.now() or holders.is_dead(row.holder):
        return None
    return row.holder, row.expires_at


@contextmanager
def held(engine: Engine, name: str, holder: str, seconds: float) -> Iterator[bool]:
    """Hold the lease for the duration of the block, renewing it from a thread every
    third of its life.  Yields False (and holds nothing) if another process has it."""
    if not acquire(engine, name, holder, seconds):
        yield False
        return
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(max(seconds / 3, 0.05)):
            try:
                if not renew(engine, name, holder, seconds):
                    log.warning("lease %s was taken over while %s held it", name, holder)
                    return
            except Exception:  # a database hiccup: try again at the next beat
                log.exception("could not renew lease %s", name)

    keeper = threading.Thread(target=keep, name=f"lease-{name}", daemon=True)
    keeper.start()
    try:
        yield True
    finally:
        stop.set()
        keeper.join()
        release(engine, name, holder)


# -- heartbeats ------------------------------------------------------------------------------

HEARTBEAT_KEPT = timedelta(days=1)


def beat(engine: Engine, holder: str, started_at: datetime) -> None:
    """Say this daemon is alive; forget daemons silent for a day (they crashed)."""
    now = clock.now()
    with engine.begin() as conn:
        conn.execute(delete(Heartbeat).where(Heartbeat.last_seen < now - HEARTBEAT_KEPT))
        result = conn.execute(update(Heartbeat).where(Heartbeat.holder == holder).values(last_seen=now))
        if result.rowcount == 0:
            conn.execute(insert(Heartbeat).values(holder=holder, pid=os.getpid(), host=socket.gethostname(),
                                                  started_at=started_at, last_seen=now))


def forget(engine: Engine, holder: str) -> None:
    with engine.begin() as conn:
        conn.execute(delete(Heartbeat).where(Heartbeat.holder == holder))


def daemons(engine: Engine, *, alive_within: timedelta) -> list[Daemon]:
    """Daemons seen within ``alive_within``; older rows (crashed daemons) are ignored."""
    since = clock.now() - alive_within
    with engine.begin() as conn:
        rows = conn.execute(select(Heartbeat).where(Heartbeat.last_seen >= since)
                            .order_by(Heartbeat.started_at)).all()
    return [Daemon(r.holder, r.pid, r.host, r.started_at, r.last_seen) for r in rows]
