"""Feeds stage: the library's articles as RSS 2.0, Atom 1.0 and JSON Feed 1.1.

All three come from the same values (``ArticleView``, ``pipeline.site.views``) as the
web pages, and each item carries what an email reader sees: the full article HTML
with its numbered references, the author block, the disclaimer, the terms notice and
the privacy notice.

A ``Channel`` is one set of three feeds: the whole library's at the site root, or
one public topic's under ``topics/<id>/`` (``pipeline.site.topics``). Each carries
the site icon and logo (``pipeline.site.icons``) and a rights line from the publisher
settings (``pipeline.site.meta.rights_line``).

Output depends on content only, never on the build time, so rebuilding an
unchanged library gives byte-identical files: ids are canonical article URLs, and
the feed-level ``updated``/``lastBuildDate`` (and the rights line's year) come from
the newest item, not "now" (feedgen's default, which we override).

feedgen traps handled here (see shared/docs/feed-checklist.md): the RSS channel
``<link>`` is the *last* link added, so ``rel=self`` goes first; RSS drops an
author without an email, so the author is ``dc:creator``; ``type='CDATA'`` makes
invalid Atom, so content is escaped HTML (``type='html'``); ``image()`` and ``logo()``
each set both RSS <image> and Atom <logo>, so each format calls only its own.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from feedgen.feed import FeedGenerator

from pipeline.content import markup
from pipeline.content.library import Library
from pipeline.errors import ContentError
from pipeline.settings import Settings
from pipeline.site import icons
from pipeline.site.meta import rights_line
from pipeline.site.views import (ArticleView, article_view, due_articles, same_day_offsets, site_url,
                                 web_templates)

if TYPE_CHECKING:  # the notices module imports SQLAlchemy, which a build without a database never needs
    from pipeline.corrections.notices import ArticleNotices

RSS_FILE, ATOM_FILE, JSON_FILE = "feed.xml", "atom.xml", "feed.json"
# file name -> (media type, human name); the static server and the pages' autodiscovery links read this
FEEDS: dict[str, tuple[str, str]] = {
    RSS_FILE: ("application/rss+xml", "RSS"),
    ATOM_FILE: ("application/atom+xml", "Atom"),
    JSON_FILE: ("application/feed+json", "JSON Feed"),
}
JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
GENERATOR = "library-newsletter"  # no version number: a dependency upgrade must not change the bytes


@dataclass(frozen=True)
class Channel:
    """One set of three feeds and the HTML page they belong to."""

    folder: str  # "" (the site root) or "topics/<id>/"
    title: str
    description: str
    home: str  # absolute URL of the HTML page

    def file(self, name: str) -> str:
        return f"{self.folder}{name}"


def site_channel(settings: Settings) -> Channel:
    return Channel("", settings.publication_name, _description(settings), site_url(settings))


def item_html(view: ArticleView, settings: Settings) -> str:
    """The full article as one HTML fragment for a feed item; kept on the view, since the three
    formats (and each topic's feeds the view is in) show the same fragment."""
    kept = view.__dict__.get("_item_html")
    if kept is not None and kept[0] is settings:
        return kept[1]
    template = "feed_item_retracted.html" if view.retraction else "feed_item.html"
    if not view.retraction:
        view.body_html  # first: its one parse also gives the standfirst
    html = web_templates().get_template(template).render(view=view, article=view.article,
                                                                 settings=settings).strip()
    view.__dict__["_item_html"] = (settings, html)  # a frozen dataclass: as cached_property does
    return html


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


def _generator(settings: Settings, views: list[ArticleView], channel: Channel, self_file: str,
               rss: bool) -> FeedGenerator:
    fg = FeedGenerator()
    if rss:
        # dc:creator for RSS only: feedgen drops an RSS <author> without an email address
        fg.load_extension("dc", atom=False, rss=True)
    media = rss and any(v.image for v in views)
    if media:
        # the lead image as media:content (an RSS <enclosure> needs the byte length, which
        # only fetching the image could tell, and nothing is fetched at build time)
        fg.load_extension("media", atom=False, rss=True)
    fg.id(channel.home)
    fg.title(channel.title)
    fg.description(channel.description)  # also Atom's <subtitle>
    fg.language(settings.language)
    fg.generator(GENERATOR)
    # rel=self FIRST: feedgen makes the RSS channel <link> the last link added, which must be the site
    fg.link(href=site_url(settings, channel.file(self_file)), rel="self", type=FEEDS[self_file][0])
    fg.link(href=channel.home, rel="alternate", type="text/html")
    updated = _feed_updated(views)
    fg.updated(updated)  # also RSS lastBuildDate; feedgen's default is the build time
    fg.rights(rights_line(settings, updated.year))  # Atom <rights> and RSS <copyright>
    if rss:  # RSS <image>: GIF, JPEG or PNG, at most 144 px wide
        width, height = icons.PNGS[icons.RSS_IMAGE]
        fg.image(url=site_url(settings, icons.RSS_IMAGE), title=channel.title, link=channel.home,
                 width=str(width), height=str(height))
    else:  # Atom: a square <icon> and a 2:1 <logo>
        fg.icon(site_url(settings, icons.FAVICON_PNG))
        fg.logo(site_url(settings, icons.LOGO))
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


def rss_feed(library: Library, as_of: date | None = None, *, views: list[ArticleView] | None = None,
             channel: Channel | None = None) -> bytes:
    settings = library.settings
    fg = _generator(settings, views or _items(library, as_of), channel or site_channel(settings), RSS_FILE, rss=True)
    return fg.rss_str(pretty=True, encoding="UTF-8", xml_declaration=True)


def atom_feed(library: Library, as_of: date | None = None, *, views: list[ArticleView] | None = None,
              channel: Channel | None = None) -> bytes:
    settings = library.settings
    fg = _generator(settings, views or _items(library, as_of), channel or site_channel(settings), ATOM_FILE,
                    rss=False)
    return fg.atom_str(pretty=True, encoding="UTF-8", xml_declaration=True)


def json_feed(library: Library, as_of: date | None = None, *, views: list[ArticleView] | None = None,
              channel: Channel | None = None) -> bytes:
    """JSON Feed 1.1, written directly (feedgen has none) from the same values."""
    settings = library.settings
    views = views or _items(library, as_of)
    channel = channel or site_channel(settings)
    feed = {
        "version": JSON_FEED_VERSION,
        "title": channel.title,
        "home_page_url": channel.home,
        "feed_url": site_url(settings, channel.file(JSON_FILE)),
        "description": channel.description,
        "icon": site_url(settings, icons.ICON),
        "favicon": site_url(settings, icons.FAVICON_PNG),
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


def channel_feeds(library: Library, views: list[ArticleView], channel: Channel) -> dict[str, bytes]:
    """Output path -> bytes for a channel's three feeds, from one list of views (each item's
    Markdown is rendered once for all three)."""
    return {
        channel.file(RSS_FILE): rss_feed(library, views=views, channel=channel),
        channel.file(ATOM_FILE): atom_feed(library, views=views, channel=channel),
        channel.file(JSON_FILE): json_feed(library, views=views, channel=channel),
    }


def render_feeds(library: Library, as_of: date | None = None,
                 notices: dict[str, ArticleNotices] | None = None) -> dict[str, bytes]:
    """File name -> bytes for the site's three feeds (with the corrections' and retractions' ``notices``)."""
    return channel_feeds(library, _items(library, as_of, notices), site_channel(library.settings))
