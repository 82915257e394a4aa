"""The send ledger: issues, and one row per (issue, subscriber) delivery.

Building stays apart from sending: before any message of an issue goes out, its
recipients are written here, and each row's state is recorded before and after
its SMTP transaction.  A retry or a restart reads the ledger, so it never sends
twice and never skips anyone (see pipeline/deliver.py for the state machine).

Tables (schema owned by migration 0002):

- ``issues``: one row per issue key (``2026-03-02``, ``2026-03-02-weekly``), with
  what was composed (number, subject, article slugs, audience topic) and the
  send's state.  ``lease_owner``/``lease_expires_at`` stop two processes from
  sending the same issue at once.
- ``deliveries``: the ledger proper.  ``email`` is a snapshot of the address at
  the time the recipients were chosen.  ``uncertain`` counts how often the row
  was found in flight (``sending``) after a crash: such a message may have
  reached the relay before its state was recorded.
"""
from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Date, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.database import AwareDateTime, Base

# Row states.  queued -> sending -> sent | deferred | failed | bounced; skipped when
# the subscriber left (or was suppressed) after the ledger was written; uncertain
# when a crash left the row in sending.
QUEUED, SENDING, SENT, DEFERRED, FAILED, BOUNCED, UNCERTAIN, SKIPPED = (
    "queued", "sending", "sent", "deferred", "failed", "bounced", "uncertain", "skipped")
DELIVERY_STATES = (QUEUED, SENDING, SENT, DEFERRED, FAILED, BOUNCED, UNCERTAIN, SKIPPED)
FINAL_STATES = (SENT, FAILED, BOUNCED, SKIPPED)

# Issue states: composed (recorded, no ledger yet) -> queued (ledger written) ->
# sending -> sent (every row final) or unfinished (rows left deferred/uncertain).
ISSUE_STATES = ("composed", "queued", "sending", "sent", "unfinished")


class IssueRecord(Base):
    __tablename__ = "issues"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="daily")
    date: Mapped[date] = mapped_column(Date)
    number: Mapped[int] = mapped_column(Integer)
    subject: Mapped[str] = mapped_column(String(998))
    articles: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of article slugs, lead first
    audience_topic: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(AwareDateTime())
    state: Mapped[str] = mapped_column(String(16), default="composed")
    recipients: Mapped[int | None] = mapped_column(Integer)  # ledger rows written
    lease_owner: Mapped[str | None] = mapped_column(String(200))  # host:pid of the sending process
    lease_expires_at: Mapped[datetime | None] = mapped_column(AwareDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(AwareDateTime())


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("issue_id", "subscriber_id", name="uq_deliveries_issue_subscriber"),
        Index("ix_deliveries_issue_state", "issue_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="SET NULL"))
    email: Mapped[str | None] = mapped_column(String(320))
    state: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    uncertain: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(AwareDateTime())
    last_reply: Mapped[str | None] = mapped_column(String(500))
    message_id: Mapped[str | None] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(AwareDateTime())
