"""The one processor: every way in (files, SMTP/LMTP, IMAP, webhooks) ends here.

``ingest_message`` takes the raw bytes of a notification that came by mail and
``record`` takes the events a verified webhook reported; both write, in **one
transaction**, the raw notification, one ``bounce_events`` row per recipient and
what the policy does about it, so a crash can never keep the event and lose the
suppression (or the other way round).  The same bytes (or the same provider event
id) twice are one event.

Policy (``apply``):

- ``hard``: the address is suppressed and the subscriber becomes ``bounced``
  (``subscribers.store.leave_in``, with a consent record saying which event);
- ``soft``: adds 1 to the address's score, which halves every
  ``bounce_score_decay_days``; reaching ``bounce_score_threshold`` suppresses;
- ``complaint``: unsubscribed and suppressed at once (status ``complained``);
- ``policy``: counted, and ``newsletter status`` alerts; the address stays;
- ``delayed``, ``notice``, ``autoreply``, ``not-spam``: recorded, nothing done;
- ``unparsed``, ``unmatched`` (a mail notification with no valid VERP id, which we
  cannot tie to anyone without guessing): kept and counted.

A mail notification is acted on only through its VERP id (signed, so it cannot be
forged); a webhook event only after its provider's signature checked out, and then
by the address the provider names.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Engine, delete, select, update

from pipeline import clock
from pipeline.bounces.models import BounceEvent, BounceRaw, BounceScore, WebhookNonce
from pipeline.bounces.parse import Report, parse
from pipeline.database import transaction
from pipeline.delivery.ledger import Delivery
from subscribers import store
from subscribers.conflicts import retrying
from subscribers.models import QueuedMail, Subscriber
from subscribers.tokens import email_hash

ACTIONS = {"hard": "suppressed", "complaint": "unsubscribed", "policy": "alerted", "unparsed": "kept",
           "unmatched": "kept"}


@dataclass(frozen=True)
class EventIn:
    """One thing a notification says about one recipient."""

    key: str  # unique: the same event twice is one event
    kind: str
    email: str | None = None
    status: str = ""
    diagnostic: str = ""
    delivery_id: int | None = None
    queue_id: int | None = None
    message_id: str | None = None  # our Message-ID, when a webhook quotes it


@dataclass
class Result:
    raw_id: int | None = None
    duplicate: bool = False
    events: list[dict] = field(default_factory=list)  # {"id", "kind", "action", "email"}

    def line(self) -> str:
        if self.duplicate:
            return "already processed (same notification)"
        if not self.events:
            return "recorded, nothing to act on"
        return "; ".join(f"{e['kind']} {e['email'] or '(no address)'}: {e['action']}" for e in self.events)


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def events_of(report: Report, key: str) -> list[EventIn]:
    """The events one parsed mail notification gives."""
    row = {}
    if report.verp is not None:
        row = {"delivery_id" if report.verp.kind == "d" else "queue_id": report.verp.row_id}
    if report.kind in ("unparsed", "autoreply") or (report.kind == "arf" and not report.findings):
        kind = "unparsed" if report.kind != "autoreply" else "autoreply"
        return [EventIn(f"{key}:0", kind, diagnostic=report.note, **row)]
    events = []
    for n, f in enumerate(report.findings):
        kind = f.kind
        if report.verp is None and kind in ("hard", "soft", "complaint"):
            kind = "unmatched"  # no signed id: never act on an address read from an unsigned message
        events.append(EventIn(f"{key}:{n}", kind, f.email, f.status, f.diagnostic, **row))
    return events or [EventIn(f"{key}:0", "unparsed", diagnostic=report.note, **row)]


def ingest_message(engine: Engine, settings, raw: bytes, source: str,
                   envelope_to: tuple[str, ...] = ()) -> Result:
    """Parse one notification that came by mail and apply it (see the module doc)."""
    report = parse(settings, raw, envelope_to)
    key = digest(raw)
    return record(engine, settings, source, raw, events_of(report, key))


def record(engine: Engine, settings, source: str, raw: bytes, events: list[EventIn]) -> Result:
    """Keep ``raw`` and apply ``events``, all in one transaction (retried on a conflict)."""
    key = digest(raw)

    def write() -> Result:
        with transaction(engine) as s:
            raw_id = s.scalar(select(BounceRaw.id).where(BounceRaw.digest == key))
            if raw_id is None:
                row = BounceRaw(received_at=clock.now(), source=source[:32], digest=key, body=raw)
                s.add(row)
                s.flush()
                raw_id = row.id
            result = Result(raw_id)
            fresh = 0
            for event in events:
                if s.scalar(select(BounceEvent.id).where(BounceEvent.event_key == event.key)) is not None:
                    continue
                fresh += 1
                result.events.append(apply(s, settings, source, raw_id, event))
            result.duplicate = not fresh and bool(events)
            return result

    result = retrying(write)
    prune(engine, settings)
    return result


def apply(session, settings, source: str, raw_id: int, event: EventIn) -> dict:
    """Write one event and do what the policy says, in ``session``."""
    now = clock.now()
    subscriber_id, email, issue_id = _target(session, event)
    hash_ = email_hash(settings, store.email_key(email)) if email and _valid(email) else None
    who: int | str | None = subscriber_id if subscriber_id is not None else (email if hash_ else None)
    kind, action, score = event.kind, ACTIONS.get(event.kind, "ignored"), None
    detail = {"event": event.key, "kind": kind, "status": event.status or None, "source": source}
    if kind in ("hard", "soft", "complaint") and who is None:
        action = "kept"  # nobody to act on (the row was erased, the address unreadable)
    elif kind == "hard":
        store.leave_in(session, settings, who, "bounced", method="system", detail=detail)
    elif kind == "complaint":
        store.leave_in(session, settings, who, "complained", method="system", detail=detail)
    elif kind == "soft" and hash_:
        score = _add_score(session, settings, hash_, now)
        action = "scored"
        if score >= float(settings.bounce_score_threshold):
            store.leave_in(session, settings, who, "bounced", method="system", detail={**detail, "score": score})
            action = "suppressed"
    row = BounceEvent(event_key=event.key[:200], raw_id=raw_id, received_at=now, source=source[:32], kind=kind,
                      action=action, email=email, email_hash=hash_, subscriber_id=subscriber_id, issue_id=issue_id,
                      delivery_id=event.delivery_id, queue_id=event.queue_id, status=(event.status or None),
                      diagnostic=(event.diagnostic or None), score=score)
    session.add(row)
    session.flush()
    return {"id": row.id, "kind": kind, "action": action, "email": email}


def _valid(email: str) -> bool:
    try:
        store.email_key(email)
        return True
    except Exception:  # noqa: BLE001 - SubscriberError: an address a report mangled
        return False


def _target(session, event: EventIn) -> tuple[int | None, str | None, int | None]:
    """(subscriber id, address, issue id) the event is about, from our own records first."""
    if event.delivery_id is not None:
        row = session.get(Delivery, event.delivery_id)
        if row is not None:
            email = row.email or _address_of(session, row.subscriber_id) or event.email
            return row.subscriber_id, email, row.issue_id
    if event.queue_id is not None:
        row = session.get(QueuedMail, event.queue_id)
        if row is not None and row.subscriber_id is not None:
            return row.subscriber_id, _address_of(session, row.subscriber_id) or event.email, None
    if event.message_id:
        row = session.scalar(select(Delivery).where(Delivery.message_id == event.message_id).limit(1))
        if row is not None:
            return row.subscriber_id, row.email or event.email, row.issue_id
    if event.email and event.kind in ("hard", "soft", "complaint", "policy") and _valid(event.email):
        sub = store.find(session, event.email)
        return (sub.id if sub is not None else None), event.email, None
    return None, event.email, None


def _address_of(session, subscriber_id: int | None) -> str | None:
    if subscriber_id is None:
        return None
    return session.scalar(select(Subscriber.email).where(Subscriber.id == subscriber_id))


def decayed(score: float, since, now, half_life_days: float) -> float:
    days = max((now - since).total_seconds(), 0.0) / 86400.0
    return score * 0.5 ** (days / max(float(half_life_days), 0.001))


def _add_score(session, settings, hash_: str, now) -> float:
    row = session.scalar(select(BounceScore).where(BounceScore.email_hash == hash_).with_for_update())
    if row is None:
        row = BounceScore(email_hash=hash_, score=0.0, updated_at=now)
        session.add(row)
    row.score = round(decayed(row.score, row.updated_at, now, settings.bounce_score_decay_days) + 1.0, 6)
    row.updated_at = now
    return row.score


def score_of(session, settings, hash_: str) -> float:
    row = session.scalar(select(BounceScore).where(BounceScore.email_hash == hash_))
    return decayed(row.score, row.updated_at, clock.now(), settings.bounce_score_decay_days) if row else 0.0


def prune(engine: Engine, settings) -> int:
    """Forget raw notifications older than ``bounce_raw_days`` and webhook nonces past
    their window; the events (what was decided, and why) stay."""
    now = clock.now()
    cutoff = now - timedelta(days=float(settings.bounce_raw_days))
    with transaction(engine) as s:
        old = select(BounceRaw.id).where(BounceRaw.received_at < cutoff)
        s.execute(update(BounceEvent).where(BounceEvent.raw_id.in_(old)).values(raw_id=None))
        gone = s.execute(delete(BounceRaw).where(BounceRaw.received_at < cutoff)).rowcount
        nonce_cutoff = now - timedelta(seconds=2 * float(settings.webhook_replay_seconds))
        s.execute(delete(WebhookNonce).where(WebhookNonce.seen_at < nonce_cutoff))
    return gone or 0
