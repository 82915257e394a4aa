"""Undo and evidence: what was decided about an address and why, and how to undo a false positive.

``events`` lists recent events (optionally for one address); ``show`` gives one event
with its raw notification (while it is kept); ``release`` lifts a bounce suppression
(``subscribers.store.release_in``), resets the soft score and writes an audit row,
all in one transaction; ``erase_in`` forgets a person's bounce records (erasure).
"""
from __future__ import annotations

from sqlalchemy import Engine, delete, select

from pipeline import clock
from pipeline.bounces.models import BounceEvent, BounceRaw, BounceRelease, BounceScore
from pipeline.bounces.process import score_of
from pipeline.database import transaction
from pipeline.errors import BounceError
from subscribers import store
from subscribers.tokens import email_hash


def _plain(e: BounceEvent) -> dict:
    return {"id": e.id, "received_at": e.received_at.isoformat(), "source": e.source, "kind": e.kind,
            "action": e.action, "email": e.email, "subscriber_id": e.subscriber_id, "issue_id": e.issue_id,
            "delivery_id": e.delivery_id, "queue_id": e.queue_id, "status": e.status, "diagnostic": e.diagnostic,
            "score": e.score, "raw_id": e.raw_id}


def events(engine: Engine, settings, address: str | None = None, kind: str | None = None,
           limit: int = 50) -> list[dict]:
    query = select(BounceEvent).order_by(BounceEvent.id.desc()).limit(limit)
    if address:
        query = query.where(BounceEvent.email_hash == email_hash(settings, store.email_key(address)))
    if kind:
        query = query.where(BounceEvent.kind == kind)
    with transaction(engine) as s:
        return [_plain(e) for e in s.scalars(query)]


def show(engine: Engine, settings, event_id: int) -> dict:
    with transaction(engine) as s:
        e = s.get(BounceEvent, event_id)
        if e is None:
            raise BounceError(f"no bounce event {event_id}")
        found = _plain(e)
        raw = s.get(BounceRaw, e.raw_id) if e.raw_id is not None else None
        found["raw"] = raw.body.decode("utf-8", "replace") if raw is not None else None
        if raw is None:
            found["raw_note"] = f"the raw notification is kept {settings.bounce_raw_days} days and has been pruned"
        if e.email_hash:
            found["suppressed"] = s.scalar(select(store.Suppression.reason)
                                           .where(store.Suppression.email_hash == e.email_hash))
            found["score_now"] = round(score_of(s, settings, e.email_hash), 3)
        return found


def release(engine: Engine, settings, address: str, *, by: str, reason: str) -> dict:
    """Undo a bounce suppression of ``address`` (audited); ``SubscriberError`` when it is
    not a bounce (complaints, unsubscribes and erasures only the person can undo)."""
    if not (reason or "").strip():
        raise BounceError("a release needs a reason (--reason): it is kept with the audit record")
    with transaction(engine) as s:
        info, lifted = store.release_in(s, settings, address, by=by, reason=reason.strip())
        hash_ = email_hash(settings, store.email_key(address))
        s.execute(delete(BounceScore).where(BounceScore.email_hash == hash_))
        audit = BounceRelease(email_hash=hash_, subscriber_id=info.id if info else None, released_by=by[:200],
                              reason=reason.strip(), previous=lifted, at=clock.now())
        s.add(audit)
        s.flush()
        return {"release": audit.id, "address": address, "lifted": lifted,
                "status": info.status if info else None, "by": by, "at": audit.at.isoformat()}


def releases(engine: Engine, settings, address: str) -> list[dict]:
    hash_ = email_hash(settings, store.email_key(address))
    with transaction(engine) as s:
        rows = s.scalars(select(BounceRelease).where(BounceRelease.email_hash == hash_).order_by(BounceRelease.id))
        return [{"id": r.id, "by": r.released_by, "reason": r.reason, "lifted": r.previous, "at": r.at.isoformat()}
                for r in rows]


def erase_in(session, subscriber_id: int, hash_: str) -> None:
    """Erasure: the person's events lose their address and text, their raw notifications go."""
    ids = [e.raw_id for e in session.scalars(select(BounceEvent).where(
        (BounceEvent.subscriber_id == subscriber_id) | (BounceEvent.email_hash == hash_))) if e.raw_id is not None]
    session.execute(BounceEvent.__table__.update().where(
        (BounceEvent.subscriber_id == subscriber_id) | (BounceEvent.email_hash == hash_))
        .values(email=None, diagnostic=None, raw_id=None, subscriber_id=None))
    if ids:
        session.execute(delete(BounceRaw).where(BounceRaw.id.in_(ids)))
    session.execute(delete(BounceScore).where(BounceScore.email_hash == hash_))
