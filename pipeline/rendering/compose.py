"""Compose stage: decide which articles make up an issue.

Pure functions from the library (and, later, the editorial calendar's
``scheduled`` and ``sent`` slugs) to an ``Issue``.  Nothing here reads the
clock, the database or the disk, so the scheduler and the preview command get
exactly the same answer for the same inputs.

- The issue for a date holds the articles scheduled for that date, in the
  order the editors gave.
- With nothing scheduled, it holds the next article of the queue (oldest
  ``published`` first) that has not been sent and is already published.
- Several articles form one digest: the first in full, the rest as summaries
  (``Issue.lead`` and ``Issue.articles[1:]``; the render stage lays it out).
"""
from __future__ import annotations

from datetime import date, timedelta
from typing import Collection, Mapping, Sequence

from pipeline.content.article import Article
from pipeline.content.library import Library
from pipeline.errors import ContentError
from pipeline.rendering.issue import Issue

KINDS = ("daily", "weekly")


def compose_issue(library: Library, on: date, *, number: int, scheduled: Sequence[str] = (),
                  sent: Collection[str] = (), audience_topic: str | None = None,
                  kind: str = "daily") -> Issue | None:
    """The issue for ``on``, or None when nothing is due.

    ``scheduled`` are the slugs the editors put on that date (an unknown slug is
    a ``ContentError`` naming it).  ``sent`` are slugs already sent, which the
    queue skips.  With ``audience_topic`` set, the queue only offers articles of
    that topic, since the issue goes only to that topic's subscribers.
    """
    _check(library, number, audience_topic, kind)
    if scheduled:
        articles = _unique(library.article(slug) for slug in scheduled)
    else:
        queued = next(_queue(library, on, sent, audience_topic), None)
        if queued is None:
            return None
        articles = (queued,)
    return Issue(date=on, number=number, articles=articles, audience_topic=audience_topic, kind=kind,
                 audience_label=_label(library, audience_topic))


def _label(library: Library, audience_topic: str | None) -> str | None:
    if audience_topic is None:
        return None
    from subscribers.tokens import audience_label
    return audience_label(library.settings, audience_topic)


def next_in_queue(library: Library, on: date, sent: Collection[str] = (),
                  audience_topic: str | None = None) -> Article | None:
    """The article the queue would offer on ``on`` (for previews and the calendar)."""
    return next(_queue(library, on, sent, audience_topic), None)


def weekly_issue(library: Library, week_ending: date, number: int, *,
                 sent_on: Mapping[str, date] | None = None,
                 audience_topic: str | None = None, start: date | None = None) -> Issue | None:
    """The weekly digest for the days ``start`` (default: six days before) to
    ``week_ending``, inclusive.

    With ``sent_on`` (slug -> date its daily issue went out) the digest holds
    the articles sent in those days, in sending order; without it, the articles
    published then, oldest first.  None when the week had nothing.
    """
    _check(library, number, audience_topic, "weekly")
    start = start if start is not None else week_ending - timedelta(days=6)
    if sent_on is not None:
        in_week = sorted((when, slug) for slug, when in sent_on.items() if start <= when <= week_ending)
        articles = _unique(library.article(slug) for _, slug in in_week)
    else:
        articles = tuple(a for a in library.articles if start <= a.published <= week_ending)
    if audience_topic is not None:
        articles = tuple(a for a in articles if audience_topic in a.topics)
    if not articles:
        return None
    return Issue(date=week_ending, number=number, articles=articles, audience_topic=audience_topic, kind="weekly",
                 audience_label=_label(library, audience_topic))


def _queue(library: Library, on: date, sent: Collection[str], audience_topic: str | None):
    sent = set(sent)
    for article in library.articles:  # oldest published first
        if article.slug in sent or article.published > on:
            continue
        if audience_topic is not None and audience_topic not in article.topics:
            continue
        yield article


def _unique(articles) -> tuple[Article, ...]:
    # the same slug scheduled twice on one date is one article in the issue, not two
    seen: dict[str, Article] = {}
    for article in articles:
        seen.setdefault(article.slug, article)
    return tuple(seen.values())


def _check(library: Library, number: int, audience_topic: str | None, kind: str) -> None:
    if kind not in KINDS:
        raise ContentError(f"issue kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if number < 1:
        raise ContentError(f"issue number must be 1 or more, got {number}")
    if audience_topic is not None and audience_topic not in (library.settings.topics or {}):
        raise ContentError(f"unknown audience topic {audience_topic!r} (not in site settings)")
