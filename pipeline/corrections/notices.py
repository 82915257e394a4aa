"""The corrections as the site shows them: frozen values for the article page, the feeds
and the issue pages (``pipeline.site``).

``load_notices(engine)`` gives slug -> ``ArticleNotices``; the build passes it to
``build_site``, which stays free of the database.  ``site_update`` is the way in for
commands that may run where no database was ever created (a build on a fresh
checkout): no database file, no corrections.  ``site_update`` is the
one call a site update makes: it also records the versions that go out.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Engine, select

from pipeline.corrections import records
from pipeline.corrections.records import CORRECTIONS, RETRACTION, Correction
from pipeline.errors import CorrectionError


@dataclass(frozen=True)
class Notice:
    """One correction or retraction as readers see it."""

    id: int
    kind: str  # correction | retraction
    label: str  # "Correction" (significant), "Updated" (minor) or "Retraction"
    note: str
    at: datetime  # when it was recorded, timezone-aware
    day: date  # its date in the site's time zone

    @property
    def retraction(self) -> bool:
        return self.kind == RETRACTION


@dataclass(frozen=True)
class ArticleNotices:
    """Every notice of one article, oldest first."""

    slug: str
    items: tuple[Notice, ...]

    @property
    def latest(self) -> Notice:
        return self.items[-1]

    @property
    def retraction(self) -> Notice | None:
        return next((n for n in self.items if n.retraction), None)

    @property
    def changed_at(self) -> datetime:
        """When the article last changed for readers: the feeds' updated / date_modified."""
        return self.latest.at

    @property
    def newest_first(self) -> tuple[Notice, ...]:
        return tuple(reversed(self.items))

    @property
    def key(self) -> str:
        """A digest of everything shown, for the build cache's input keys."""
        text = "\0".join(f"{n.id}|{n.kind}|{n.label}|{n.note}|{n.at.isoformat()}" for n in self.items)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def notice_of(correction: Correction, timezone: str) -> Notice:
    return Notice(correction.id, correction.kind, correction.label(), correction.note,
                  correction.created_at.replace(microsecond=0),
                  correction.local_day(timezone))


def load_notices(engine: Engine, timezone: str) -> dict[str, ArticleNotices]:
    with engine.connect() as conn:
        rows = [Correction.of(r) for r in conn.execute(select(CORRECTIONS).order_by(CORRECTIONS.c.id))]
    by_slug: dict[str, list[Notice]] = {}
    for row in rows:
        by_slug.setdefault(row.slug, []).append(notice_of(row, timezone))
    return {slug: ArticleNotices(slug, tuple(items)) for slug, items in by_slug.items()}


def existing_engine(settings) -> Engine | None:
    """The configured database, or None when it is a SQLite file that does not exist yet
    (nothing was ever corrected there, and a build must not create it)."""
    from pipeline.database import open_database

    if settings.database_not_created:
        return None
    return open_database(settings.database_url)


def site_update(library, as_of: date, *, engine: Engine | None = None,
                sent: tuple = ()) -> dict[str, ArticleNotices]:
    """What a site update needs to show every correction, for ``build_site(notices=...)``.

    It also records the versions going out (``records.remember``): the first version of each
    article the site publishes, and ``sent``, the articles of an issue being sent, so
    ``newsletter correct`` can tell whether an article changed since."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        engine = engine if engine is not None else existing_engine(library.settings)
        if engine is None:
            return {}
        records.remember_site(engine, library, as_of)
        if sent:
            records.remember(engine, sent, records.ISSUE)
        return load_notices(engine, library.settings.timezone)
    except SQLAlchemyError as exc:
        # never build without them: a retracted article's page would come back
        reason = str(exc.orig if getattr(exc, "orig", None) else exc).splitlines()[0]
        raise CorrectionError(f"cannot read the corrections from the database ({reason}); the site is left "
                              "as it was, so no correction or retraction disappears from it") from None
