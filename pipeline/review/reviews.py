"""Medical sign-off: a reviewer's decision on one version of an article.

A version is the SHA-256 of the article's file (front matter and body, with the
byte-order mark dropped and line endings made LF), so any edit after an approval
makes it stale.  Decisions are append-only rows (``reviews``); the newest one for
the current version decides:

``approved``  the current version was approved;
``rejected``  the current version was sent back, with the reviewer's comment;
``stale``     an earlier version was approved, this one was not reviewed yet;
``awaiting``  no version was ever approved.

``blocking`` is what ``plan_day`` asks before a send (the one decider), and
``attach`` gives the approved articles their ``reviewed_by``/``reviewed_on``, which
the email, the article page and the feed item print as "Medically reviewed by
NAME, CREDENTIALS on DATE".
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine, select

from pipeline import clock
from pipeline.content import versions
from pipeline.content.article import Reviewer
from pipeline.database import transaction
from pipeline.errors import StaffError
from pipeline.staff import audit
from pipeline.staff.models import ReviewRecord

if TYPE_CHECKING:  # the accounts (argon2) are imported only by a decision, not by every build
    from pipeline.staff.accounts import Staff

APPROVED, REJECTED, STALE, AWAITING = "approved", "rejected", "stale", "awaiting"
LABELS = {APPROVED: "approved", REJECTED: "sent back", STALE: "awaiting review (edited since approval)",
          AWAITING: "awaiting review"}
MAX_COMMENT = 4000


def article_version(article) -> str:
    """The SHA-256 of the article's front matter and body as written (``pipeline.content.versions``)."""
    source = getattr(article, "source", None)
    version = versions.of_file(source) if source is not None else None
    if version is None:  # an article made in code: its fields are its content
        fields = (article.slug, article.title, article.summary, article.published, article.updated,
                  article.author.id, article.topics,
                  tuple((r.number, r.text, r.url, r.cited) for r in article.references), article.body)
        version = hashlib.sha256(repr(fields).encode("utf-8")).hexdigest()
    return version


@dataclass(frozen=True)
class Review:
    slug: str
    version: str
    decision: str
    who: Reviewer  # as they were when they decided
    comment: str | None
    at: datetime

    @property
    def reviewer(self) -> str:
        """"NAME, CREDENTIALS"."""
        return str(self.who)

    @classmethod
    def of(cls, row: ReviewRecord) -> "Review":
        who = Reviewer(row.reviewer_name, row.reviewer_credentials or "")
        return cls(row.slug, row.version, row.decision, who, row.comment, row.at)


@dataclass(frozen=True)
class Status:
    slug: str
    version: str
    state: str
    review: Review | None = None  # the decision on this version, or the last approval of an older one

    @property
    def approved(self) -> bool:
        return self.state == APPROVED

    @property
    def label(self) -> str:
        return LABELS[self.state]

    def describe(self, tz=None) -> str:
        text = self.label
        if self.review is not None:
            on = self.review.at.astimezone(tz) if tz else self.review.at
            verb = "approved" if self.review.decision == APPROVED else "sent back"
            text += f" ({verb} by {self.review.reviewer} on {on:%Y-%m-%d})"
            if self.state == REJECTED and self.review.comment:
                text += f": {self.review.comment}"
        return text


def _history(session, slugs) -> dict[str, list[ReviewRecord]]:
    found: dict[str, list[ReviewRecord]] = {}
    rows = session.scalars(select(ReviewRecord).where(ReviewRecord.slug.in_(list(slugs)))
                           .order_by(ReviewRecord.id)).all()
    for row in rows:
        found.setdefault(row.slug, []).append(row)
    return found


def statuses(engine: Engine, articles) -> dict[str, Status]:
    """slug -> the review status of each article's current version."""
    articles = list(articles)
    if not articles:
        return {}
    with transaction(engine) as session:
        history = _history(session, {a.slug for a in articles})
    found = {}
    for article in articles:
        version = article_version(article)
        rows = history.get(article.slug, [])
        mine = [r for r in rows if r.version == version]
        if mine:
            last = mine[-1]
            found[article.slug] = Status(article.slug, version, last.decision, Review.of(last))
            continue
        approvals = [r for r in rows if r.decision == APPROVED]
        if approvals:
            found[article.slug] = Status(article.slug, version, STALE, Review.of(approvals[-1]))
        else:
            found[article.slug] = Status(article.slug, version, AWAITING)
    return found


def version_approved(engine: Engine, slug: str, version: str) -> bool:
    """True when the newest decision on this exact version of ``slug`` is an approval."""
    with transaction(engine) as session:
        decision = session.scalar(select(ReviewRecord.decision)
                                  .where(ReviewRecord.slug == slug, ReviewRecord.version == version)
                                  .order_by(ReviewRecord.id.desc()).limit(1))
    return decision == APPROVED


def status(engine: Engine, article) -> Status:
    return statuses(engine, [article])[article.slug]


def decide(engine: Engine, staff: Staff, article, decision: str, comment: str | None = None, *,
           via: str = "cli", ip: str | None = None) -> Review:
    """Record ``staff``'s decision (approved or rejected) on the article's current
    version, with its audit row, in one transaction.  A reviewer only; sending back
    needs a comment saying why."""
    if decision not in (APPROVED, REJECTED):
        raise StaffError(f"a review is approved or rejected, not {decision!r}")
    from pipeline.staff.accounts import require

    require(staff, "reviewer", "sign off articles")
    if staff.disabled:
        raise StaffError(f"{staff.email} is disabled")
    comment = audit.clean(" ".join((comment or "").split()), MAX_COMMENT) or None
    if decision == REJECTED and not comment:
        raise StaffError("say what needs changing: sending an article back needs a comment (--comment)")
    version = article_version(article)
    with transaction(engine) as session:
        previous = _history(session, [article.slug]).get(article.slug, [])
        before = next((r.decision for r in reversed(previous) if r.version == version), None)
        row = ReviewRecord(slug=article.slug, version=version, decision=decision, staff_id=staff.id,
                           reviewer_name=staff.name, reviewer_credentials=staff.credentials, comment=comment,
                           at=clock.now())
        session.add(row)
        audit.record(session, staff.email, f"review.{'approve' if decision == APPROVED else 'reject'}",
                     article.slug, before={"version": version[:12], "decision": before},
                     after={"version": version[:12], "decision": decision, "comment": comment}, via=via, ip=ip)
        session.flush()
        return Review.of(row)


def blocking(engine: Engine, articles) -> list[Status]:
    """The articles among ``articles`` whose current version is not approved."""
    found = statuses(engine, articles)
    return [found[a.slug] for a in articles if not found[a.slug].approved]


def reviewed_on(review: Review, settings) -> date:
    from zoneinfo import ZoneInfo
    try:
        return review.at.astimezone(ZoneInfo(settings.timezone)).date()
    except Exception:  # a bad time zone is reported by check; the UTC date will do here
        return review.at.date()


def attach_articles(engine: Engine, settings, articles) -> tuple:
    """``articles`` with ``reviewed_by``/``reviewed_on`` set from their current approval (or cleared)."""
    found = statuses(engine, articles)
    out = []
    for article in articles:
        st = found[article.slug]
        by = on = None
        if st.approved and st.review is not None:
            by, on = st.review.who, reviewed_on(st.review, settings)
        if (by, on) != (article.reviewed_by, article.reviewed_on):
            article = replace(article, reviewed_by=by, reviewed_on=on)
        out.append(article)
    return tuple(out)


def attach(engine: Engine, library):
    """``library`` with each article whose current version is approved carrying
    ``reviewed_by`` and ``reviewed_on`` (and a page input key that changes with them,
    so the site build rewrites its page)."""
    if engine is None or not library.articles:
        return library
    articles = attach_articles(engine, library.settings, library.articles)
    if articles == library.articles and all(a.reviewed_by is None for a in articles):
        return library
    keys = dict(library.input_keys)
    for article in articles:
        if article.reviewed_by is not None:
            base = keys.get(article.slug) or hashlib.sha256(repr(article).encode("utf-8")).hexdigest()
            keys[article.slug] = hashlib.sha256(
                f"{base}|reviewed:{article.reviewed_by}|{article.reviewed_on}".encode("utf-8")).hexdigest()
    return replace(library, articles=articles, input_keys=keys)


def attach_from_settings(library):
    """``attach`` for commands that otherwise need no database (``build``, ``preview``):
    a SQLite file that does not exist yet holds no review, and is not created."""
    from pipeline.database import open_database

    if library.settings.database_not_created:
        return library
    return attach(open_database(library.settings.database_url), library)
