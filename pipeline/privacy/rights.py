"""A person's data rights (UK GDPR): access (an export of everything held) and erasure.

What we hold about a subscriber lives in two places: the subscriber store (the
person, their topics, consent records, queued mail, sign-up requests, one-time
links) and the send ledger (which issue went to which address, and what the relay
answered, which may echo the address). These functions are the one place that
reaches both, each in one transaction, for the web's one-time links
(``pipeline.privacy.access``) and ``newsletter subscribers export-person|erase``.
"""
from __future__ import annotations

from sqlalchemy import Engine, select, update

from pipeline import clock
from pipeline.bounces.evidence import erase_in as erase_bounces
from pipeline.database import transaction
from pipeline.delivery.ledger import Delivery, IssueRecord
from subscribers import store


def export_data(engine: Engine, settings, subscriber_id: int) -> dict | None:
    """Everything held about one subscriber, JSON-ready; None when nobody has that id."""
    with transaction(engine) as s:
        data = store.export_record(s, settings, subscriber_id)
        if data is None:
            return None
        rows = s.execute(
            select(IssueRecord.key, IssueRecord.subject, Delivery.state, Delivery.message_id, Delivery.updated_at)
            .join(IssueRecord, IssueRecord.id == Delivery.issue_id)
            .where(Delivery.subscriber_id == subscriber_id).order_by(Delivery.id)).all()
        data["emails_sent"] = [{"issue": r.key, "subject": r.subject, "state": r.state,
                                "message_id": r.message_id,
                                "at": r.updated_at.isoformat() if r.updated_at else None} for r in rows]
        data["exported_at"] = clock.now().isoformat()
        return data


def erase(engine: Engine, settings, subscriber: int | str, *, method: str = "web") -> bool:
    """Delete the person; keep only the suppression hash, an anonymous erase event and the
    ledger's anonymous delivery counts. False when nobody matches (erasing twice is harmless)."""
    with transaction(engine) as s:
        sub = store.find(s, subscriber)
        if sub is None:
            return False
        # The ledger keeps a snapshot of the address, and the relay's reply may echo it:
        # cleared before the person goes (their rows lose the subscriber id with them).
        s.execute(update(Delivery).where(Delivery.subscriber_id == sub.id).values(email=None, last_reply=None))
        erase_bounces(s, sub.id, sub.email_hash)  # bounce events lose the address; raw notifications go
        store.erase_in(s, sub, method=method)
        return True
