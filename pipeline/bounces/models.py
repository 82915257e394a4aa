"""Tables of the bounce processor (schema owned by migration 0008).

- ``bounce_raw``: every notification as it arrived (a DSN, an ARF report, an
  auto-reply, a webhook body, or something nobody could parse), kept
  ``bounce_raw_days`` (30) and then pruned, so a suppression can be checked
  against its evidence and a false positive undone.
- ``bounce_events``: what was read from it, one row per recipient it reports on,
  with the kind (``hard``, ``soft``, ``policy``, ``complaint``, ``delayed``,
  ``autoreply``, ``not-spam``, ``unmatched``, ``unparsed``), the action taken and
  the row it was traced to (by the VERP id, or the provider's authenticated event).
  ``event_key`` is unique: the same notification (or webhook event) twice is one event.
- ``bounce_scores``: each address's soft-bounce score (keyed by the suppression
  list's address hash), decayed on read.
- ``bounce_releases``: the audit of ``newsletter bounces release``: who, when, why.
- ``webhook_nonces``: tokens and signatures already seen (replay defence), pruned
  after the replay window.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.database import AwareDateTime, Base
from pipeline.delivery import ledger  # noqa: F401 - the issues table the events refer to
import subscribers.models  # noqa: F401 - the subscribers table

KINDS = ("hard", "soft", "policy", "complaint", "delayed", "autoreply", "not-spam", "unmatched", "unparsed")


class BounceRaw(Base):
    __tablename__ = "bounce_raw"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(AwareDateTime(), index=True)
    source: Mapped[str] = mapped_column(String(32))  # ingest, smtp, lmtp, imap, webhook:ses, ...
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the bytes: the same file twice is once
    body: Mapped[bytes] = mapped_column(LargeBinary)


class BounceEvent(Base):
    __tablename__ = "bounce_events"
    __table_args__ = (Index("ix_bounce_events_issue_kind", "issue_id", "kind"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_key: Mapped[str] = mapped_column(String(200), unique=True)
    raw_id: Mapped[int | None] = mapped_column(ForeignKey("bounce_raw.id", ondelete="SET NULL"), index=True)
    received_at: Mapped[datetime] = mapped_column(AwareDateTime(), index=True)
    source: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(16))  # suppressed, scored, alerted, ignored, kept, unsubscribed
    email: Mapped[str | None] = mapped_column(String(320))
    email_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="SET NULL"), index=True)
    issue_id: Mapped[int | None] = mapped_column(ForeignKey("issues.id", ondelete="SET NULL"))
    delivery_id: Mapped[int | None] = mapped_column(Integer)
    queue_id: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str | None] = mapped_column(String(16))  # enhanced status code, 5.1.1
    diagnostic: Mapped[str | None] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float)  # the address's soft score after this event


class BounceScore(Base):
    __tablename__ = "bounce_scores"

    email_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    score: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(AwareDateTime())


class BounceRelease(Base):
    __tablename__ = "bounce_releases"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64), index=True)
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="SET NULL"))
    released_by: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    previous: Mapped[str] = mapped_column(String(32))  # the suppression reason lifted
    at: Mapped[datetime] = mapped_column(AwareDateTime())


class WebhookNonce(Base):
    __tablename__ = "webhook_nonces"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)  # provider:token
    seen_at: Mapped[datetime] = mapped_column(AwareDateTime(), index=True)
