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
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from feedgen.feed import FeedGenerator

from pipeline import clock, markup
from pipeline.article import Article
from pipeline.content import Library
from pipeline.errors import ContentError
from pipeline.settings import Settings

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "web"

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


@dataclass(frozen=True)
class ArticleView:
    """One article as the web pages and feeds show it."""

    article: Article
    url: str  # canonical, absolute; also the feed id / guid
    published_at: datetime  # timezone-aware
    updated_at: datetime  # timezone-aware; equals published_at until the article is edited
    body_html: str  # sanitised; citations are absolute links to the references on the article page
    page_body_html: str  # the same for the article page itself: citations are in-page (#ref-N) links
    topics: tuple[Topic, ...]
    standfirst: str = ""  # the summary shown above the body; "" when it would repeat the body's opening
    image: markup.Image | None = None  # the lead image (the body's first), for feed enclosures


# ids the article page (templates/web/*.html) uses itself; a heading never takes one
PAGE_IDS = ("main", "section-references", "section-author", "section-author-heading", "section-disclaimer",
            "section-privacy")


# -- values ----------------------------------------------------------------------

def site_url(settings: Settings, path: str = "") -> str:
    """Absolute URL of ``path`` (no leading slash) under ``base_url``."""
    return f"{settings.base_url.rstrip('/')}/{path}"


def article_url(settings: Settings, slug: str) -> str:
    return site_url(settings, f"articles/{slug}/")


def zone(settings: Settings) -> ZoneInfo:
    try:
        return ZoneInfo(settings.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ContentError(f"timezone {settings.timezone!r} is not an IANA time zone", path=settings.source) from None


def publication_time(day: date, settings: Settings, offset: int = 0) -> datetime:
    """An article dated ``day`` counts as published at the daily send time in the site's zone,
    plus ``offset`` seconds to tell same-day articles apart: a fixed, content-derived instant
    (never the build time)."""
    try:
        hour, minute = (int(part) for part in str(settings.send_time).split(":"))
        at = time(hour, minute)
    except ValueError:
        raise ContentError(f"send_time must be HH:MM, got {settings.send_time!r}", path=settings.source) from None
    return datetime.combine(day, at, tzinfo=zone(settings)) + timedelta(seconds=offset)


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


def article_view(article: Article, settings: Settings, offsets: tuple[int, int] = (0, 0)) -> ArticleView:
    url = article_url(settings, article.slug)
    reserved = (*PAGE_IDS, *(f"ref-{ref.number}" for ref in article.references))
    images = markup.images(article.body)
    return ArticleView(
        article=article,
        url=url,
        published_at=publication_time(article.published, settings, offsets[0]),
        updated_at=publication_time(article.last_modified, settings, offsets[1]),
        body_html=markup.to_html(article.body, cite_href=lambda n: f"{url}#ref-{n}", heading_ids=True,
                                 reserved_ids=reserved),
        page_body_html=markup.to_html(article.body, cite_href=lambda n: f"#ref-{n}", heading_ids=True,
                                      reserved_ids=reserved),
        topics=tuple(Topic(t, topic_name(settings, t)) for t in article.topics),
        standfirst="" if markup.repeats_opening(article.summary, article.body) else article.summary,
        image=images[0] if images else None,
    )


def public_articles(library: Library, as_of: date | None = None) -> list[ArticleView]:
    """Every article published on or before ``as_of`` (default: today), newest first.
    A future-dated article stays off the site and the feeds until its date."""
    as_of = as_of or today(library.settings)
    due = [a for a in library.articles if a.published <= as_of]
    due.sort(key=lambda a: (a.published, a.slug), reverse=True)
    offsets = same_day_offsets(library.articles)
    # (same-day articles: the later slug is the later second, so this order is the instants' order too)
    return [article_view(a, library.settings, offsets[a.slug]) for a in due]


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
    return env


def item_html(view: ArticleView, settings: Settings) -> str:
    """The full article as one HTML fragment for a feed item."""
    return web_templates().get_template("feed_item.html").render(view=view, article=view.article,
                                                                 settings=settings).strip()


# -- the three feeds ----------------------------------------------------------------

def _items(library: Library, as_of: date | None) -> list[ArticleView]:
    views = public_articles(library, as_of)[: max(int(library.settings.feed_items), 0)]
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
        entry.summary(article.summary)  # also the RSS plain <description>
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


def rss_feed(library: Library, as_of: date | None = None) -> bytes:
    fg = _generator(library, _items(library, as_of), RSS_FILE, rss=True)
    return fg.rss_str(pretty=True, encoding="UTF-8", xml_declaration=True)


def atom_feed(library: Library, as_of: date | None = None) -> bytes:
    fg = _generator(library, _items(library, as_of), ATOM_FILE, rss=False)
    return fg.atom_str(pretty=True, encoding="UTF-8", xml_declaration=True)


def json_feed(library: Library, as_of: date | None = None) -> bytes:
    """JSON Feed 1.1, written directly (feedgen has none) from the same values."""
    settings = library.settings
    views = _items(library, as_of)
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
                "summary": v.article.summary,
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


def render_feeds(library: Library, as_of: date | None = None) -> dict[str, bytes]:
    """File name -> bytes for the three feeds."""
    return {
        RSS_FILE: rss_feed(library, as_of),
        ATOM_FILE: atom_feed(library, as_of),
        JSON_FILE: json_feed(library, as_of),
    }
