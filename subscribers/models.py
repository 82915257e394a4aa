"""Subscriber store tables (SQLAlchemy 2). The schema is created by Alembic migrations."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from pipeline.database import AwareDateTime, Base

STATUSES = ("pending", "confirmed", "unsubscribed", "bounced", "complained")
FREQUENCIES = ("daily", "weekly")


class Subscriber(Base):
    __tablename__ = "subscribers"
    # The recipients query: confirmed, one frequency, in id order (keyset pages).
    # AUTOINCREMENT: SQLite must never hand an erased person's id to someone new,
    # because their old unsubscribe and preferences links carry that id.
    __table_args__ = (Index("ix_subscribers_sending", "status", "frequency", "id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320))  # normalised by email-validator
    email_key: Mapped[str] = mapped_column(String(320), unique=True)  # lower-cased: unique case-insensitively
    # keyed hash of email_key (subscribers.tokens.email_hash): joins the suppression list in SQL
    email_hash: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    frequency: Mapped[str] = mapped_column(String(8), default="daily")
    created_at: Mapped[datetime] = mapped_column(AwareDateTime())
    updated_at: Mapped[datetime] = mapped_column(AwareDateTime())
    # one timestamp per status, set each time the subscriber enters it
    pending_at: Mapped[datetime | None] = mapped_column(AwareDateTime())
    confirmed_at: Mapped[datetime | None] = mapped_column(AwareDateTime())
    unsubscribed_at: Mapped[datetime | None] = mapped_column(AwareDateTime())
    bounced_at: Mapped[datetime | None] = mapped_column(AwareDateTime())
    complained_at: Mapped[datetime | None] = mapped_column(AwareDateTime())
    # when the last confirmation email went out: the sign-up form resends at most every few minutes
    confirm_sent_at: Mapped[datetime | None] = mapped_column(AwareDateTime())
    # when the issue arrives (subscribers.delivery_time): NULL is the editors' zone and send time
    time_zone: Mapped[str | None] = mapped_column(String(64))  # IANA name
    delivery_hour: Mapped[int | None] = mapped_column(Integer)  # 0..23 in time_zone

    topics: Mapped[list["SubscriberTopic"]] = relationship(
        back_populates="subscriber", cascade="all, delete-orphan", lazy="selectin")

    @property
    def topic_ids(self) -> list[str]:
        return sorted(t.topic for t in self.topics)


class SubscriberTopic(Base):
    __tablename__ = "subscriber_topics"

    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True)
    topic: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    subscriber: Mapped[Subscriber] = relationship(back_populates="topics")


class ConsentRecord(Base):
    """Append-only: one row per consent event (subscribe, confirm, preferences,
    unsubscribe, erase). Rows are never updated; on erasure the personal fields
    of the erased person's rows are cleared and the subscriber link is cut."""

    __tablename__ = "consent_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="SET NULL"), index=True)
    action: Mapped[str] = mapped_column(String(32))  # subscribe, confirm, preferences, unsubscribe, erase, ...
    method: Mapped[str] = mapped_column(String(32))  # web, import, cli, one-click, ...
    ip: Mapped[str | None] = mapped_column(String(64))
    wording: Mapped[str | None] = mapped_column(Text)
    wording_version: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)  # JSON: what was agreed to (frequency, topics); personal
    at: Mapped[datetime] = mapped_column(AwareDateTime())


class Suppression(Base):
    """Addresses never to be mailed. ``email_hash`` is a keyed hash (HMAC of the
    normalised address) so an erased person's address is not kept in clear."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64), unique=True)
    reason: Mapped[str] = mapped_column(String(32))  # unsubscribed, bounced, complained, erased
    at: Mapped[datetime] = mapped_column(AwareDateTime())


class SignupRequest(Base):
    """One sign-up form post that was mailed a confirmation link.  The link names
    this row, and confirming applies exactly its choices: a later post for the same
    address is a request of its own and never changes this one or the subscriber."""

    __tablename__ = "signup_requests"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are in links: never reused

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"), index=True)
    consent_id: Mapped[int] = mapped_column(Integer)  # its "subscribe" consent record (wording, ip, time)
    name: Mapped[str | None] = mapped_column(String(200))
    frequency: Mapped[str] = mapped_column(String(8))
    topics: Mapped[str] = mapped_column(Text)  # JSON list of topic ids
    created_at: Mapped[datetime] = mapped_column(AwareDateTime())
    confirmed_at: Mapped[datetime | None] = mapped_column(AwareDateTime())  # set once, by compare-and-set


class AccessLink(Base):
    """A one-time link for export or erasure: emailed, valid for a short while, used once."""

    __tablename__ = "access_links"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(AwareDateTime())
    expires_at: Mapped[datetime] = mapped_column(AwareDateTime())
    used_at: Mapped[datetime | None] = mapped_column(AwareDateTime())


class RateLimit(Base):
    """A fixed-window counter per key (an IP block, an address hash), shared by every
    web process through the database."""

    __tablename__ = "rate_limits"

    key: Mapped[str] = mapped_column(String(120), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(AwareDateTime())
    count: Mapped[int] = mapped_column(Integer)
    window_end: Mapped[datetime] = mapped_column(AwareDateTime(), index=True)  # when the row may be pruned


class QueuedMail(Base):
    """Transactional mail waiting to leave (see ``subscribers.mailqueue``)."""

    __tablename__ = "mail_queue"
    __table_args__ = (Index("ix_mail_queue_due", "state", "next_at"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # confirm, already, welcome, data-link
    recipient: Mapped[str | None] = mapped_column(String(320))  # cleared once sent
    body: Mapped[bytes | None] = mapped_column(LargeBinary)  # the finished message; cleared once sent
    state: Mapped[str] = mapped_column(String(8))  # queued, sending, sent, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime] = mapped_column(AwareDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[datetime | None] = mapped_column(AwareDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    failed_at: Mapped[datetime | None] = mapped_column(AwareDateTime())  # the first failure of this message
    created_at: Mapped[datetime] = mapped_column(AwareDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(AwareDateTime())
