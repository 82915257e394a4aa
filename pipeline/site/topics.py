"""Per-topic archive pages and feeds, for the topics not marked sensitive.

A public topic (in ``settings.topics`` without ``sensitive: true``) with at least one
published article gets, under ``topics/<id>/``:

- ``index.html`` and ``page/<n>/index.html``: its articles, newest first, paginated
  like the main archive (``pipeline.site.archive``);
- ``feed.xml``, ``atom.xml``, ``feed.json``: its newest ``feed_items`` articles
  (``pipeline.site.feeds.Channel``).

A sensitive topic (a health condition: a reader's interest in it is special-category
data) gets nothing: no page, no feed, no link, no sitemap entry, no file name.
``public_topics`` is the one place that decides which topics are public; a topic
that turns sensitive (or loses its last article) has its folder removed at the next
build.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.content.cache import digest
from pipeline.errors import ContentError
from pipeline.settings import Settings
from pipeline.site.feeds import FEEDS, Channel
from pipeline.site.views import site_url
from pipeline.site.views import ArticleView, Topic, topic_name

TOPICS_DIR = "topics"
TOPIC_ID_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def public_topics(settings: Settings) -> list[Topic]:
    """The topics that may have public pages and feeds, in settings order: every topic
    not marked sensitive. A public topic's id is its URL folder, so it must be a slug."""
    topics = []
    for topic_id, spec in (settings.topics or {}).items():
        if (spec or {}).get("sensitive"):
            continue
        if not TOPIC_ID_RE.match(str(topic_id)):
            raise ContentError(f"topic id {topic_id!r} must be lowercase letters, digits and hyphens: it is the "
                               "folder of the topic's public page", path=settings.source)
        topics.append(Topic(str(topic_id), topic_name(settings, str(topic_id))))
    return topics


def folder(topic: Topic) -> str:
    return f"{TOPICS_DIR}/{topic.id}/"


def topic_url(settings: Settings, topic: Topic) -> str:
    return site_url(settings, folder(topic))


def channel(settings: Settings, topic: Topic) -> Channel:
    return Channel(folder(topic), f"{settings.publication_name}: {topic.name}",
                   f"Articles on {topic.name} from {settings.publication_name}.", topic_url(settings, topic))


@dataclass(frozen=True)
class TopicArchive:
    """One public topic and its published articles, newest first."""

    topic: Topic
    views: tuple[ArticleView, ...]
    channel: Channel


def topic_archives(settings: Settings, views: list[ArticleView]) -> list[TopicArchive]:
    """The public topics that have at least one of ``views`` (newest first), with their articles."""
    wanted = {t.id: t for t in public_topics(settings)}
    by_topic: dict[str, list[ArticleView]] = {t: [] for t in wanted}
    for view in views:
        for topic_id in view.article.topics:
            if topic_id in by_topic:
                by_topic[topic_id].append(view)
    return [TopicArchive(wanted[t], tuple(vs), channel(settings, wanted[t])) for t, vs in by_topic.items() if vs]


def topic_links(settings: Settings, archives: list[TopicArchive]) -> dict[str, str]:
    """Topic id -> its page's URL, for the topics that have a page."""
    return {a.topic.id: a.channel.home for a in archives}


def feed_links(settings: Settings, chan: Channel | None = None) -> list[dict[str, str]]:
    """Autodiscovery and visible links for a channel's three feeds (default: the site's)."""
    prefix = chan.folder if chan else ""
    title = chan.title if chan else settings.publication_name
    return [{"href": site_url(settings, f"{prefix}{name}"), "type": media_type, "title": f"{title} ({label})",
             "label": label, "file": name}
            for name, (media_type, label) in FEEDS.items()]


def feeds_key(chan: Channel, views: list[ArticleView], input_key) -> str:
    """The inputs of a channel's feed files: the channel and each item's article and instants
    (settings, templates and code are in the build hash)."""
    items = [(v.url, v.published_at.isoformat(), v.updated_at.isoformat(), input_key(v)) for v in views]
    return digest(repr(chan), repr(items))
