"""Corrections and retractions as records, and the versions of each article that went out.

Tables (schema owned by migration 0006):

- ``corrections``: one row per correction or retraction, for good and in order:
  the article, the kind, whether it is significant, the note, the SHA-256 of the
  article's file before (the last version that went out) and after (the file now),
  who recorded it and when.  A partial unique index allows one retraction per article,
  so two editors retracting at once get one row and one clear refusal.
- ``article_versions``: the hash of each version of an article that went out: first
  seen on the site (``site``), mailed in an issue (``issue``), or recorded with a
  correction (``correction``).  ``newsletter correct`` compares the file with the
  newest of them: an article that has not changed since cannot be corrected.

A site build records only an article's first version (a later build of an edited
article is not a publication an editor announced; the correction that follows is).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Iterable
from zoneinfo import ZoneInfo

from sqlalchemy import Boolean, Engine, Index, Integer, String, Text, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from pipeline import clock
from pipeline.content.article import Article
from pipeline.review.reviews import article_version
from pipeline.database import AwareDateTime, Base
from pipeline.errors import ContentError, CorrectionError

CORRECTION, RETRACTION = "correction", "retraction"
KINDS = (CORRECTION, RETRACTION)
NOTE_LIMIT = 1000  # characters: a notice is short; the article says the rest
SITE, ISSUE, CORRECTED = "site", "issue", "correction"  # where a version went out


class CorrectionRecord(Base):
    __tablename__ = "corrections"
    __table_args__ = (
        Index("ix_corrections_slug", "slug", "id"),
        Index("uq_corrections_one_retraction", "slug", unique=True,
              sqlite_where=text("kind = 'retraction'"), postgresql_where=text("kind = 'retraction'")),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    significant: Mapped[bool] = mapped_column(Boolean, default=False)
    note: Mapped[str] = mapped_column(Text)
    before_hash: Mapped[str | None] = mapped_column(String(64))
    after_hash: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(AwareDateTime())


class ArticleVersion(Base):
    __tablename__ = "article_versions"
    __table_args__ = (Index("ix_article_versions_slug", "slug", "id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(200))
    content_hash: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    recorded_at: Mapped[datetime] = mapped_column(AwareDateTime())


CORRECTIONS = CorrectionRecord.__table__
VERSIONS = ArticleVersion.__table__


@dataclass(frozen=True)
class Correction:
    """One recorded correction or retraction."""

    id: int
    slug: str
    kind: str
    significant: bool
    note: str
    before_hash: str | None
    after_hash: str
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, row) -> "Correction":
        return cls(row.id, row.slug, row.kind, bool(row.significant), row.note, row.before_hash, row.after_hash,
                   row.created_by, row.created_at)

    @property
    def retraction(self) -> bool:
        return self.kind == RETRACTION

    @property
    def notifies(self) -> bool:
        """Whether the people who got the article are mailed a notice."""
        return self.retraction or self.significant

    def local_day(self, timezone: str) -> date:
        return self.created_at.astimezone(ZoneInfo(timezone)).date()

    def label(self) -> str:
        return "Retraction" if self.retraction else ("Correction" if self.significant else "Updated")


# -- hashes and versions ------------------------------------------------------------------


def latest_versions(engine: Engine, slugs: Iterable[str] | None = None) -> dict[str, str]:
    """slug -> the hash of the newest version that went out."""
    query = select(VERSIONS.c.slug, VERSIONS.c.content_hash).order_by(VERSIONS.c.id)
    if slugs is not None:
        query = query.where(VERSIONS.c.slug.in_(list(slugs)))
    with engine.connect() as conn:
        return {row.slug: row.content_hash for row in conn.execute(query)}


def remember(engine: Engine, articles: Iterable[Article], source: str) -> int:
    """Record the current version of ``articles`` as gone out by ``source``.  A site build
    (``SITE``) records only an article's first version; an issue records a version the newest
    record does not already hold.  Returns how many were recorded."""
    articles = list(articles)
    if not articles:
        return 0
    known = latest_versions(engine, [a.slug for a in articles])
    now = clock.now()
    rows = []
    for article in articles:
        if source == SITE and article.slug in known:
            continue  # a site build records only a first version: no need to hash this one
        digest = article_version(article)  # the version a review belongs to
        if known.get(article.slug) == digest:
            continue
        rows.append(dict(slug=article.slug, content_hash=digest, source=source, recorded_at=now))
    if rows:
        with engine.begin() as conn:
            conn.execute(insert(VERSIONS), rows)
    return len(rows)


def remember_site(engine: Engine, library, as_of: date) -> int:
    """First versions of the articles a build put on the site (published by ``as_of``)."""
    return remember(engine, [a for a in library.articles if a.published <= as_of], SITE)


# -- reading ------------------------------------------------------------------------------

def find(engine: Engine, correction_id: int) -> Correction:
    with engine.connect() as conn:
        row = conn.execute(select(CORRECTIONS).where(CORRECTIONS.c.id == correction_id)).first()
    if row is None:
        raise CorrectionError(f"no correction with id {correction_id} (`newsletter corrections` lists them)")
    return Correction.of(row)


def listing(engine: Engine, slug: str | None = None) -> list[Correction]:
    """Every correction and retraction (of ``slug``), oldest first."""
    query = select(CORRECTIONS).order_by(CORRECTIONS.c.id)
    if slug is not None:
        query = query.where(CORRECTIONS.c.slug == slug)
    with engine.connect() as conn:
        return [Correction.of(r) for r in conn.execute(query)]


def retraction_of(engine: Engine, slug: str) -> Correction | None:
    with engine.connect() as conn:
        row = conn.execute(select(CORRECTIONS).where(CORRECTIONS.c.slug == slug,
                                                     CORRECTIONS.c.kind == RETRACTION)).first()
    return Correction.of(row) if row else None


def _audit(conn, actor: str, correction_id: int, values: dict, via: str, ip: str | None) -> None:
    """The audit row of a correction or retraction, inside its transaction."""
    from sqlalchemy.orm import Session

    from pipeline.staff import audit

    with Session(bind=conn) as session:  # joins the connection's transaction: one commit for both
        audit.record(session, actor, f"{values['kind']}.record", values["slug"],
                     before={"content": values["before_hash"]},
                     after={"id": correction_id, "kind": values["kind"], "significant": values["significant"],
                            "note": values["note"], "content": values["after_hash"], "by": values["created_by"]},
                     via=via, ip=ip)
        session.flush()


# -- recording ----------------------------------------------------------------------------

_SPACE = re.compile(r"[\s\u2028\u2029\u0085]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_note(note: str | None) -> str:
    """The note as one paragraph: whitespace (line separators too) collapsed.  An empty
    note, control characters or an over-long note are refused."""
    if note is None or not note.strip():
        raise CorrectionError("the note is empty: say what was wrong and what the article says now")
    if _CONTROL.search(note):
        raise CorrectionError("the note contains control characters; write it as plain text")
    cleaned = _SPACE.sub(" ", note).strip()
    if len(cleaned) > NOTE_LIMIT:
        raise CorrectionError(f"the note is {len(cleaned)} characters; keep it under {NOTE_LIMIT} "
                              "(the article itself says the rest)")
    return cleaned


def _article(library, slug: str) -> Article:
    try:
        return library.article(slug)
    except ContentError:
        raise CorrectionError(f"unknown article {slug!r}: no content/articles file has that slug") from None


def _serialise(conn, slug: str) -> None:
    """Make concurrent ``record`` calls for ``slug`` take turns, so each sees the one before:
    on PostgreSQL a transaction advisory lock keyed by the slug; on SQLite a write that takes
    the database's write lock (a statement that matches no row still takes it)."""
    if conn.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"corrections:{slug}".encode("utf-8")).digest()[:8], "big", signed=True)
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)" % key)
    else:
        conn.execute(text("UPDATE corrections SET id = id WHERE 1 = 0"))


def _refusal(conn, slug: str, kind: str, now_hash: str, source) -> str | None:
    """Why ``slug`` may not get a new record of ``kind``, read inside the recording transaction."""
    row = conn.execute(select(CORRECTIONS).where(CORRECTIONS.c.slug == slug, CORRECTIONS.c.kind == RETRACTION)
                       ).first()
    if row is not None:
        retracted = Correction.of(row)
        when = retracted.created_at.isoformat(timespec="minutes")
        if kind == RETRACTION:
            return (f"{slug} was already retracted on {when} by {retracted.created_by} "
                    f"(correction {retracted.id}); it is retracted once")
        return f"{slug} was retracted on {when}; a retracted article cannot be corrected"
    if kind == CORRECTION and _latest_version(conn, slug) == now_hash:
        return (f"{slug} has not changed since the version that went out: edit "
                f"{source or 'the article'} first, then record the correction")
    return None


def _latest_version(conn, slug: str) -> str | None:
    return conn.execute(select(VERSIONS.c.content_hash).where(VERSIONS.c.slug == slug)
                        .order_by(VERSIONS.c.id.desc()).limit(1)).scalar()


def record(engine: Engine, library, slug: str, note: str, *, kind: str = CORRECTION, significant: bool = False,
           by: str, today: date, actor: str | None = None, via: str = "cli", ip: str | None = None) -> Correction:
    """Record a correction (the article must have changed since the last version that went
    out) or a retraction (once per article), with its audit row (``actor``, default ``by``)
    in the same transaction.  Raises ``CorrectionError`` with one line.

    The checks are made again inside the transaction that records, one command at a time per
    article (``_serialise``): two editors recording the same edit at once make one correction,
    and so one notice per reader, not two.  A retraction of an article whose ``published``
    date has not come is allowed (it holds the article from the send it is scheduled for);
    a correction of one is refused (nobody has seen it: edit it freely)."""
    if kind not in KINDS:
        raise CorrectionError(f"kind must be correction or retraction, not {kind!r}")
    note = clean_note(note)
    article = _article(library, slug)
    if kind == CORRECTION and article.published > today:
        raise CorrectionError(f"{slug} is not published until {article.published.isoformat()}: nobody has seen "
                              "it yet, so edit it freely; there is nothing to correct (`newsletter retract` "
                              "withdraws it from its send)")
    now_hash = article_version(article)
    try:
        with engine.begin() as conn:
            _serialise(conn, slug)
            refusal = _refusal(conn, slug, kind, now_hash, article.source)
            if refusal is not None:
                raise CorrectionError(refusal)
            values = dict(slug=slug, kind=kind, significant=bool(significant or kind == RETRACTION), note=note,
                          before_hash=_latest_version(conn, slug), after_hash=now_hash,
                          created_by=" ".join(by.split())[:200] or "unknown", created_at=clock.now())
            new_id = conn.execute(insert(CORRECTIONS).values(**values)).inserted_primary_key[0]
            if kind == CORRECTION:
                conn.execute(insert(VERSIONS).values(slug=slug, content_hash=now_hash, source=CORRECTED,
                                                     recorded_at=values["created_at"]))
            _audit(conn, actor or values["created_by"], new_id, values, via, ip)
    except IntegrityError:  # the partial unique index: another editor retracted it just now
        raise CorrectionError(f"{slug} was already retracted (just now, by another command)") from None
    return find(engine, new_id)
