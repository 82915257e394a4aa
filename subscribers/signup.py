"""Double opt-in: a sign-up is a request with its own link, and only that link confirms it.

- ``sign_up`` (the web form, or ``subscribers add``) writes a ``signup_requests``
  row with the choices posted, its ``subscribe`` consent record and the
  confirmation email (into ``mail_queue``), in one transaction.  A new address
  also gets a ``pending`` subscriber row; an existing row is never changed by a
  request, because anyone can type any address into the form.
- ``confirm`` (the POST behind the button on the confirmation page) applies
  exactly its request's choices, once: the request's ``confirmed_at`` is set by
  compare-and-set, so fifty clicks make one confirmation and one welcome email.
- What is mailed is limited (``subscribers.limits``): per address, at most
  ``confirmations_per_address_per_day`` emails a day; an address that left
  (unsubscribed or erased) at most one every ``rejoin_confirm_days``; a bounced
  or complained address gets nothing.  The web page says the same in every case.

Both functions retry their transaction after a conflict with a concurrent writer
(``subscribers.conflicts``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable

from sqlalchemy import Engine, delete, func, select, update

from pipeline import clock
from pipeline.database import transaction
from pipeline.errors import SubscriberError
from subscribers import limits, mailqueue, messages
from subscribers.conflicts import insert_ignore, retrying
from subscribers.models import ConsentRecord, SignupRequest, Subscriber, Suppression
from subscribers.store import (_choices, _info, _record, _set_status, _set_topics, SubscriberInfo, clean_frequency,
                               clean_name, clean_topics, consent_wording, normalise_email,
                               topics_consent_wording)
from subscribers.tokens import email_hash

NEVER_MAILED = ("bounced", "complained")
LEAVE_ACTIONS = ("unsubscribe", "bounce", "complaint")


@dataclass(frozen=True)
class SignUpOutcome:
    """What happened: ``mailed`` is ``confirm`` (a request and its link), ``already``
    (a note to a confirmed subscriber) or ``none`` (limited, or never mailed)."""

    mailed: str
    subscriber_id: int | None = None
    request_id: int | None = None


@dataclass(frozen=True)
class RequestView:
    """A sign-up request as the confirmation page shows it."""

    id: int
    subscriber_id: int
    frequency: str
    topics: tuple[str, ...]
    confirmed: bool  # this request was confirmed
    subscriber_status: str


def sign_up(engine: Engine, settings, address: str, *, name: str | None = None, topics: Iterable[str] = (),
            frequency: str = "daily", ip: str | None = None, method: str = "web",
            topics_consent: bool = False) -> SignUpOutcome:
    """Record a sign-up request and queue its confirmation email (or nothing; see the
    module notes).  Raises ``SubscriberError`` for bad input only, never because of
    who the address belongs to."""
    address, key = normalise_email(address)
    name, topics, frequency = clean_name(name), clean_topics(settings, topics), clean_frequency(frequency)
    hash_ = email_hash(settings, key)
    wording, version = consent_wording(settings)
    explicit = {}
    if topics and topics_consent:  # the separate tick for topic choices (health data): recorded word for word
        explicit = {"topics_consent": topics_consent_wording(settings)}
        wording = f"{wording} {explicit['topics_consent']}"
    day = timedelta(days=1)
    rejoin = timedelta(days=int(settings.rejoin_confirm_days))

    def write() -> SignUpOutcome:
        at = clock.now()
        with transaction(engine) as s:
            reason = s.scalar(select(Suppression.reason).where(Suppression.email_hash == hash_))
            if reason in NEVER_MAILED:
                return SignUpOutcome("none")
            created = insert_ignore(s, Subscriber.__table__, dict(
                email=address, email_key=key, email_hash=hash_, name=name, status="pending", frequency=frequency,
                created_at=at, updated_at=at, pending_at=at), ["email_key"])
            sub = s.scalar(select(Subscriber).where(Subscriber.email_key == key).with_for_update())
            if created:
                _set_topics(sub, topics)
            if sub.status in NEVER_MAILED:
                return SignUpOutcome("none", sub.id)
            if not limits.take(s, f"confirm:{hash_}", int(settings.confirmations_per_address_per_day), day, at):
                return SignUpOutcome("none", sub.id)
            if (reason or sub.status == "unsubscribed") and not limits.take(s, f"rejoin:{hash_}", 1, rejoin, at):
                return SignUpOutcome("none", sub.id)
            info = _info(sub)
            if sub.status == "confirmed" and reason is None:
                mailqueue.enqueue(s, messages.confirmation_message(settings, info, already=True), kind="already",
                                  subscriber_id=sub.id)
                return SignUpOutcome("already", sub.id)
            consent = ConsentRecord(subscriber_id=sub.id, action="subscribe", method=method, ip=ip, wording=wording,
                                    wording_version=version, at=at,
                                    detail=json.dumps({"frequency": frequency, "topics": list(topics), "name": name, **explicit},
                                                      sort_keys=True))
            s.add(consent)
            s.flush()
            request = SignupRequest(subscriber_id=sub.id, consent_id=consent.id, name=name, frequency=frequency,
                                    topics=json.dumps(list(topics)), created_at=at)
            s.add(request)
            s.flush()
            mailqueue.enqueue(s, messages.confirmation_message(settings, info, request=request), kind="confirm",
                              subscriber_id=sub.id)
            return SignUpOutcome("confirm", sub.id, request.id)

    return retrying(write)


def get_request(engine: Engine, request_id: int) -> RequestView | None:
    with transaction(engine) as s:
        row = s.execute(select(SignupRequest, Subscriber.status).join(Subscriber, Subscriber.id == SignupRequest.subscriber_id)
                        .where(SignupRequest.id == request_id)).first()
        if row is None:
            return None
        req, status = row
        return RequestView(req.id, req.subscriber_id, req.frequency, tuple(json.loads(req.topics)),
                           req.confirmed_at is not None, status)


def confirm(engine: Engine, settings, request_id: int, *, method: str = "web",
            ip: str | None = None) -> tuple[SubscriberInfo, bool]:
    """Confirm one request: its choices apply, the suppression is lifted, consent is
    recorded with the request's wording, and the welcome email is queued.  Returns
    (subscriber, changed).  A request made before the person last left is refused:
    an old link must not undo an unsubscribe."""
    def write() -> tuple[SubscriberInfo, bool]:
        at = clock.now()
        with transaction(engine) as s:
            req = s.scalar(select(SignupRequest).where(SignupRequest.id == request_id).with_for_update())
            sub = s.scalar(select(Subscriber).where(Subscriber.id == req.subscriber_id).with_for_update()) \
                if req is not None else None
            if sub is None:
                raise SubscriberError("this confirmation link is no longer valid")
            if req.confirmed_at is not None or sub.status == "confirmed":
                return _info(sub), False
            left = s.scalar(select(func.max(ConsentRecord.id)).where(ConsentRecord.subscriber_id == sub.id,
                                                                     ConsentRecord.action.in_(LEAVE_ACTIONS)))
            if left is not None and left > req.consent_id:
                raise SubscriberError("this confirmation link is no longer valid: the address has left the list "
                                      "since; please sign up again")
            table = SignupRequest.__table__
            won = s.execute(update(table).where(table.c.id == req.id, table.c.confirmed_at.is_(None))
                            .values(confirmed_at=at)).rowcount
            if won != 1:
                return _info(sub), False
            signed = s.get(ConsentRecord, req.consent_id)
            sub.name, sub.frequency = req.name, req.frequency
            _set_topics(sub, clean_topics(settings, json.loads(req.topics)))
            _set_status(sub, "confirmed", at)
            s.execute(delete(Suppression).where(Suppression.email_hash == sub.email_hash))
            wording, version = (signed.wording, signed.wording_version) if signed else consent_wording(settings)
            _record(s, sub.id, "confirm", method, at, ip=ip, wording=wording, version=version, detail=_choices(sub))
            s.flush()
            info = _info(sub)
            mailqueue.enqueue(s, messages.welcome_message(settings, info, messages.latest_issue_url(settings)),
                              kind="welcome", subscriber_id=sub.id)
            return info, True

    return retrying(write)
