"""The values the web pages and the feeds share: ``ArticleView`` (one article as the
site shows it), its canonical URL and instants, the due articles, and the Jinja
environment of ``templates/web/``.

Output depends on content only, never on the build time:

- an article's URL is ``{base_url}/articles/<slug>/`` (also the feed id);
- an article is dated at the daily send time on its ``published`` date, in
  the settings' time zone, and ``updated`` follows its ``updated`` date;
- articles dated the same day are a second apart, in slug order
  (``same_day_offsets``), so no two items share an Atom ``updated`` value.

An embargoed article (``published`` in the future) is in no feed and on no page
until its day.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2

from pipeline import clock
from pipeline.content import legal, markup
from pipeline.content.article import Article
from pipeline.content.library import Library
from pipeline.errors import ContentError
from pipeline.settings import Settings

if TYPE_CHECKING:  # the notices module imports SQLAlchemy, which a build without a database never needs
    from pipeline.corrections.notices import ArticleNotices

TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "web"
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")


@dataclass(frozen=True)
class Topic:
    id: str
    name: str


# ids the article page (templates/web/*.html) uses itself; a heading never takes one
PAGE_IDS = ("main", "section-corrections", "section-references", "section-author", "section-author-heading", "section-reviewer",
            "section-reviewer-heading", "section-disclaimer",
            "section-privacy")


@dataclass(frozen=True)
class ArticleView:
    """One article as the web pages and feeds show it.

    The HTML bodies, the standfirst and the lead image are worked out on first use and
    kept: a page needs only ``page_body_html``, a feed item only ``body_html``, and
    Markdown parsing is most of a build's cost."""

    article: Article
    url: str  # canonical, absolute; also the feed id / guid
    published_at: datetime  # timezone-aware
    updated_at: datetime  # timezone-aware; equals published_at until the article is edited or corrected
    topics: tuple[Topic, ...]
    notices: ArticleNotices | None = None  # its corrections and retraction (pipeline.corrections)

    @property
    def retraction(self):
        return self.notices.retraction if self.notices else None

    @property
    def summary(self) -> str:
        """The feeds' summary: a retracted article's is the retraction, not the withdrawn claim."""
        return f"Retracted: {self.retraction.note}" if self.retraction else self.article.summary

    @property
    def _reserved(self) -> tuple[str, ...]:
        return (*PAGE_IDS, *(f"ref-{ref.number}" for ref in self.article.references))

    def _render(self, cite_href) -> str:
        rendered = markup.render_body(self.article.body, cite_href=cite_href, heading_ids=True,
                                      reserved_ids=self._reserved)
        # the same parse gives the opening and the images: no second parse for the standfirst
        self.__dict__.setdefault("_parsed", rendered)
        return rendered.html

    @cached_property
    def body_html(self) -> str:
        """Sanitised; citations are absolute links to the references on the article page."""
        return self._render(lambda n: f"{self.url}#ref-{n}")

    @cached_property
    def page_body_html(self) -> str:
        """The same for the article page itself: citations are in-page (#ref-N) links."""
        return self._render(lambda n: f"#ref-{n}")

    @cached_property
    def standfirst(self) -> str:
        """The summary shown above the body; "" when it would repeat the body's opening."""
        parsed = self.__dict__.get("_parsed")
        first = parsed.opening if parsed is not None else None
        return "" if markup.repeats_opening(self.article.summary, self.article.body, first_paragraph=first) \
            else self.article.summary

    @cached_property
    def image(self) -> markup.Image | None:
        """The lead image (the body's first): feed enclosures, the page's Open Graph image.
        A body without "![" has no Markdown image, and is not parsed again to learn it."""
        if "![" not in self.article.body:
            return None
        parsed = self.__dict__.get("_parsed")
        images = parsed.images if parsed is not None else markup.images(self.article.body)
        return images[0] if images else None


# -- values ----------------------------------------------------------------------

def site_url(settings: Settings, path: str = "") -> str:
    """Absolute URL of ``path`` (no leading slash) under ``base_url``."""
    return f"{settings.base_url.rstrip('/')}/{path}"


def article_url(settings: Settings, slug: str) -> str:
    return site_url(settings, f"articles/{slug}/")


def zone(settings: Settings) -> ZoneInfo:
    return _zone(settings.timezone, settings.source)


def _zone(name: str, source: Path | None) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ContentError(f"timezone {name!r} is not an IANA time zone", path=source) from None


def publication_time(day: date, settings: Settings, offset: int = 0) -> datetime:
    """An article dated ``day`` counts as published at the daily send time in the site's zone,
    plus ``offset`` seconds to tell same-day articles apart: a fixed, content-derived instant
    (never the build time)."""
    return _publication_time(day, str(settings.send_time), settings.timezone, settings.source) + \
        timedelta(seconds=offset)


@lru_cache(maxsize=8192)  # a library has a few thousand distinct dates; views of 10,000 articles ask
def _publication_time(day: date, send_time: str, timezone: str, source: Path | None) -> datetime:
    try:
        hour, minute = (int(part) for part in send_time.split(":"))
        at = time(hour, minute)
    except ValueError:
        raise ContentError(f"send_time must be HH:MM, got {send_time!r}", path=source) from None
    return datetime.combine(day, at, tzinfo=_zone(timezone, source))


def same_day_offsets(articles) -> dict[str, tuple[int, int]]:
    """slug -> (published, updated) offsets in seconds: among the articles published (or last
    modified) on the same date, the n-th in slug order is n seconds after the send time. It
    depends on the library's dates and slugs only, so a rebuild gives the same instants, and
    feed validators never see two entries with the same ``updated``."""
    published: dict[date, list[str]] = {}
    updated: dict[date, list[str]] = {}
    for article in articles:
        published.setdefault(article.published, []).append(article.slug)
        updated.setdefault(article.last_modified, []).append(article.slug)
    rank = {day: {slug: n for n, slug in enumerate(sorted(slugs))} for day, slugs in published.items()}
    rank_updated = {day: {slug: n for n, slug in enumerate(sorted(slugs))} for day, slugs in updated.items()}
    return {a.slug: (rank[a.published][a.slug], rank_updated[a.last_modified][a.slug]) for a in articles}


def today(settings: Settings) -> date:
    """The current date where the library is published."""
    return clock.now().astimezone(zone(settings)).date()


def topic_name(settings: Settings, topic_id: str) -> str:
    spec = settings.topics.get(topic_id) or {}
    return str(spec.get("name") or topic_id)


def article_view(article: Article, settings: Settings, offsets: tuple[int, int] = (0, 0),
                 notices: ArticleNotices | None = None) -> ArticleView:
    """The view of one article; ``offsets`` from ``same_day_offsets`` (seconds after the send time).
    A correction or retraction moves ``updated_at`` to when it was recorded."""
    updated = publication_time(article.last_modified, settings, offsets[1])
    return ArticleView(
        article=article,
        url=article_url(settings, article.slug),
        published_at=publication_time(article.published, settings, offsets[0]),
        updated_at=max(updated, notices.changed_at) if notices else updated,
        topics=tuple(Topic(t, topic_name(settings, t)) for t in article.topics),
        notices=notices,
    )


def due_articles(library: Library, as_of: date | None = None) -> list[Article]:
    """Every article published on or before ``as_of`` (default: today), newest first.
    A future-dated article stays off the site and the feeds until its date."""
    as_of = as_of or today(library.settings)
    due = [a for a in library.articles if a.published <= as_of]
    due.sort(key=lambda a: (a.published, a.slug), reverse=True)
    return due


def public_articles(library: Library, as_of: date | None = None,
                    notices: dict[str, ArticleNotices] | None = None) -> list[ArticleView]:
    """``due_articles`` as views (cheap: a view renders its Markdown only when asked). Same-day
    articles: the later slug is the later second, so this order is the instants' order too."""
    offsets = same_day_offsets(library.articles)
    notices = notices or {}
    return [article_view(a, library.settings, offsets[a.slug], notices.get(a.slug))
            for a in due_articles(library, as_of)]


def long_date(value: date) -> str:
    """'17 February 2023', independent of the process locale."""
    return f"{value.day} {MONTHS[value.month - 1]} {value.year}"


def _per_settings(function):
    """``function(..., settings)`` remembered per settings object (settings are read-only:
    ``replace`` makes a new object): every page of a build shows the same legal text."""
    memo: dict[tuple, tuple] = {}

    def call(*args):
        settings = args[-1]
        key = (id(settings), *args[:-1])
        hit = memo.get(key)
        if hit is None or hit[0] is not settings:  # an id can come back for another object
            if len(memo) > 256:
                memo.clear()
            hit = memo[key] = (settings, function(*args))
        return hit[1]
    return call


@lru_cache(maxsize=1)
def web_templates() -> jinja2.Environment:
    """The Jinja environment of templates/web/, shared by the feeds and the pages."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["long_date"] = long_date
    # the legal text's phrases linked where settings give their pages (one decider for every output)
    env.globals["legal_html"] = _per_settings(legal.html)
    env.globals["privacy_policy_html"] = _per_settings(legal.policy_html)
    return env

