"""Feeds stage: the library's articles as RSS 2.0, Atom 1.0 and JSON Feed 1.1.

All three come from the same values (``ArticleView``) as the web pages, and
each item carries what an email reader sees: the full article HTML with its
numbered references, the author block, the disclaimer, the terms notice and the privacy notice.

Output depends on content only, never on the build time, so rebuilding an
unchanged library gives byte-identical files:

- ids are canonical article URLs (``{base_url}/articles/<slug>/``);
- an article is dated at the daily send time on its ``published`` date, in
  the settings' time zone, and ``updated`` follows its ``updated`` date;
- the feed-level ``updated``/``lastBuildDate`` is the newest item's
  ``updated``, not "now" (feedgen's default, which we override);
- articles dated the same day are a second apart, in slug order
  (``same_day_offsets``), so no two items share an Atom ``updated`` value.

An embargoed article (``published`` in the future) is in no feed and on no page
until its day.

feedgen traps handled here (see shared/docs/feed-checklist.md): the RSS channel
``<link>`` is the *last* link added, so ``rel=self`` goes first; RSS drops an
author without an email, so the author is ``dc:creator``; ``type='CDATA'`` makes
invalid Atom, so content is escaped HTML (``type='html'``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import cached_property, lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from feedgen.feed import FeedGenerator

from pipeline import clock
from pipeline.content import legal, markup
from pipeline.content.article import Article
from pipeline.content.library import Library
from pipeline.corrections.notices import ArticleNotices
from pipeline.errors import ContentError
from pipeline.settings import Settings

TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "web"

RSS_FILE, ATOM_FILE, JSON_FILE = "feed.xml", "atom.xml", "feed.json"
# file name -> (media type, human name); the static server and the pages' autodiscovery links read this
FEEDS: dict[str, tuple[str, str]] = {
    RSS_FILE: ("application/rss+xml", "RSS"),
    ATOM_FILE: ("application/atom+xml", "Atom"),
    JSON_FILE: ("application/feed+json", "JSON Feed"),
}
JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
GENERATOR = "library-newsletter"  # no version number: a dependency upgrade must not change the bytes
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")


@dataclass(frozen=True)
class Topic:
    id: str
    name: str


# ids the article page (templates/web/*.html) uses itself; a heading never takes one
PAGE_IDS = ("main", "section-corrections", "section-references", "section-author", "section-author-heading", "section-disclaimer",
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
    updated_at: datetime  # timezone-aware; equals published_at until the article is edited
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

    @cached_property
    def body_html(self) -> str:
        """Sanitised; citations are absolute links to the references on the article page."""
        return markup.to_html(self.article.body, cite_href=lambda n: f"{self.url}#ref-{n}", heading_ids=True,
                              reserved_ids=self._reserved)

    @cached_property
    def page_body_html(self) -> str:
        """The same for the article page itself: citations are in-page (#ref-N) links."""
        return markup.to_html(self.article.body, cite_href=lambda n: f"#ref-{n}", heading_ids=True,
                              reserved_ids=self._reserved)

    @cached_property
    def standfirst(self) -> str:
        """The summary shown above the body; "" when it would repeat the body's opening."""
        return "" if markup.repeats_opening(self.article.summary, self.article.body) else self.article.summary

    @cached_property
    def image(self) -> markup.Image | None:
        """The lead image (the body's first), for feed enclosures."""
        images = markup.images(self.article.body)
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
    env.globals["legal_html"] = legal.html
    env.globals["privacy_policy_html"] = legal.policy_html
    return env


def item_html(view: ArticleView, settings: Settings) -> str:
    """The full article as one HTML fragment for a feed item."""
    template = "feed_item_retracted.html" if view.retraction else "feed_item.html"
    return web_templates().get_template(template).render(view=view, article=view.article,
                                                                 settings=settings).strip()


# -- the three feeds ----------------------------------------------------------------

def _items(library: Library, as_of: date | None,
           notices: dict[str, ArticleNotices] | None = None) -> list[ArticleView]:
    """The newest ``feed_items`` articles as views: the feeds cost O(feed_items), whatever
    the size of the library (only these are ever rendered)."""
    newest = due_articles(library, as_of)[: max(int(library.settings.feed_items), 0)]
    offsets = same_day_offsets(library.articles)
    notices = notices or {}
    views = [article_view(a, library.settings, offsets[a.slug], notices.get(a.slug)) for a in newest]
    if not views:
        raise ContentError("no published articles to put in the feeds", path=Path("articles"))
    return views


def _feed_updated(views: list[ArticleView]) -> datetime:
    # derived from content, so a rebuild without changes keeps the same value
    return max(v.updated_at for v in views)


def _description(settings: Settings) -> str:
    return " ".join(str(settings.publication_description or settings.publication_name).split())


def _generator(library: Library, views: list[ArticleView], self_file: str, rss: bool) -> FeedGenerator:
    settings = library.settings
    fg = FeedGenerator()
    if rss:
        # dc:creator for RSS only: feedgen drops an RSS <author> without an email address
        fg.load_extension("dc", atom=False, rss=True)
    media = rss and any(v.image for v in views)
    if media:
        # the lead image as media:content (an RSS <enclosure> needs the byte length, which
        # only fetching the image could tell, and nothing is fetched at build time)
        fg.load_extension("media", atom=False, rss=True)
    fg.id(site_url(settings))
    fg.title(settings.publication_name)
    fg.description(_description(settings))  # also Atom's <subtitle>
    fg.language(settings.language)
    fg.generator(GENERATOR)
    # rel=self FIRST: feedgen makes the RSS channel <link> the last link added, which must be the site
    fg.link(href=site_url(settings, self_file), rel="self", type=FEEDS[self_file][0])
    fg.link(href=site_url(settings), rel="alternate", type="text/html")
    fg.updated(_feed_updated(views))  # also RSS lastBuildDate; feedgen's default is the build time
    for view in views:  # newest first
        article = view.article
        entry = fg.add_entry(order="append")
        entry.id(view.url)
        entry.guid(view.url, permalink=True)
        entry.title(article.title)
        # (feedgen 1.0 writes an entry's Atom <link> without rel/type; Atom's default rel is alternate)
        entry.link(href=view.url, rel="alternate", type="text/html")
        entry.published(view.published_at)  # also RSS pubDate
        entry.updated(view.updated_at)
        entry.author(name=article.author.name)  # Atom only (no email: RSS skips it)
        entry.summary(view.summary)  # also the RSS plain <description>
        entry.content(item_html(view, settings), type="html")  # RSS content:encoded, Atom content type="html"
        for topic in view.topics:
            entry.category(term=topic.id, label=topic.name)
        if rss:
            entry.dc.dc_creator(article.author.name)
        if media and view.image:
            entry.media.content(_media(view.image), group=None)
    return fg


def _media(image: markup.Image) -> dict[str, str]:
    fields = {"url": image.src, "medium": "image"}
    if image.width and image.height:
        fields.update(width=str(image.width), height=str(image.height))
    return fields


def rss_feed(library: Library, as_of: date | None = None, *, views: list[ArticleView] | None = None) -> bytes:
    fg = _generator(library, views or _items(library, as_of), RSS_FILE, rss=True)
    return fg.rss_str(pretty=True, encoding="UTF-8", xml_declaration=True)


def atom_feed(library: Library, as_of: date | None = None, *, views: list[ArticleView] | None = None) -> bytes:
    fg = _generator(library, views or _items(library, as_of), ATOM_FILE, rss=False)
    return fg.atom_str(pretty=True, encoding="UTF-8", xml_declaration=True)


def json_feed(library: Library, as_of: date | None = None, *, views: list[ArticleView] | None = None) -> bytes:
    """JSON Feed 1.1, written directly (feedgen has none) from the same values."""
    settings = library.settings
    views = views or _items(library, as_of)
    feed = {
        "version": JSON_FEED_VERSION,
        "title": settings.publication_name,
        "home_page_url": site_url(settings),
        "feed_url": site_url(settings, JSON_FILE),
        "description": _description(settings),
        "language": settings.language,
        "items": [
            {
                "id": v.url,
                "url": v.url,
                "title": v.article.title,
                "summary": v.summary,
                "content_html": item_html(v, settings),
                "date_published": v.published_at.isoformat(),
                "date_modified": v.updated_at.isoformat(),
                "authors": [{"name": v.article.author.name}],
                "tags": [t.name for t in v.topics],
                **({"image": v.image.src} if v.image else {}),
            }
            for v in views
        ],
    }
    return (json.dumps(feed, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def render_feeds(library: Library, as_of: date | None = None,
                 notices: dict[str, ArticleNotices] | None = None) -> dict[str, bytes]:
    """File name -> bytes for the three feeds, from one list of views (each item's
    Markdown is rendered once for all three).  ``notices``: the corrections to show."""
    views = _items(library, as_of, notices)
    return {
        RSS_FILE: rss_feed(library, views=views),
        ATOM_FILE: atom_feed(library, views=views),
        JSON_FILE: json_feed(library, views=views),
    }
