"""Compose: which articles make up the issue of a date (scheduled, else the queue)."""
from __future__ import annotations

import dataclasses
from datetime import date

import pytest

from pipeline.content.article import Article
from pipeline.rendering.compose import compose_issue, next_in_queue, weekly_issue
from pipeline.content.library import Library
from pipeline.errors import ContentError


def _article(template: Article, slug: str, published: date, topics=("skin-care",)) -> Article:
    return dataclasses.replace(template, slug=slug, title=slug.replace("-", " ").title(), published=published,
                               topics=tuple(topics))


@pytest.fixture
def lib(library) -> Library:
    """Four articles, oldest first as the loader orders them: microneedling (2023-02-17),
    a (2023-03-01), b (2023-03-02, hair-loss), future (2026-06-01)."""
    base = library.article("microneedling")
    extra = (_article(base, "a", date(2023, 3, 1)), _article(base, "b", date(2023, 3, 2), ("hair-loss",)),
             _article(base, "future", date(2026, 6, 1)))
    return dataclasses.replace(library, articles=(base, *extra))


DAY = date(2026, 3, 3)


def slugs(issue) -> list[str]:
    return [a.slug for a in issue.articles]


def test_scheduled_articles_in_the_order_given(lib):
    issue = compose_issue(lib, DAY, number=4, scheduled=["b", "microneedling"], sent={"b"})
    assert slugs(issue) == ["b", "microneedling"]  # the editors' order; scheduled wins over "sent"
    assert issue.lead.slug == "b" and issue.date == DAY and issue.number == 4 and issue.kind == "daily"
    assert issue.key == "2026-03-03"


def test_scheduled_twice_is_one_article(lib):
    assert slugs(compose_issue(lib, DAY, number=1, scheduled=["a", "a", "b"])) == ["a", "b"]


def test_unknown_scheduled_slug_is_named(lib):
    with pytest.raises(ContentError, match="'nope'"):
        compose_issue(lib, DAY, number=1, scheduled=["a", "nope"])


def test_queue_gives_the_oldest_unsent_published_article(lib):
    assert slugs(compose_issue(lib, DAY, number=1)) == ["microneedling"]
    assert slugs(compose_issue(lib, DAY, number=2, sent={"microneedling"})) == ["a"]
    assert slugs(compose_issue(lib, DAY, number=3, sent={"microneedling", "a"})) == ["b"]
    # "future" is not published yet on DAY, so the queue is empty
    assert compose_issue(lib, DAY, number=4, sent={"microneedling", "a", "b"}) is None
    assert slugs(compose_issue(lib, date(2026, 6, 1), number=4, sent={"microneedling", "a", "b"})) == ["future"]


def test_nothing_due_is_none(lib):
    assert compose_issue(lib, date(2023, 1, 1), number=1) is None  # before anything was published
    everything = {a.slug for a in lib.articles}
    assert compose_issue(lib, date(2030, 1, 1), number=1, sent=everything) is None
    assert next_in_queue(lib, date(2030, 1, 1), everything) is None


def test_audience_topic_filters_the_queue_and_is_carried(lib):
    issue = compose_issue(lib, DAY, number=1, audience_topic="hair-loss")
    assert slugs(issue) == ["b"] and issue.audience_topic == "hair-loss"
    with pytest.raises(ContentError, match="unknown audience topic"):
        compose_issue(lib, DAY, number=1, audience_topic="not-a-topic")


def test_bad_kind_and_number_are_refused(lib):
    with pytest.raises(ContentError, match="kind"):
        compose_issue(lib, DAY, number=1, kind="hourly")
    with pytest.raises(ContentError, match="number"):
        compose_issue(lib, DAY, number=0)


def test_weekly_from_sent_dates_in_sending_order(lib):
    # the week ending Monday 2 March is 24 February to 2 March, both included
    sent_on = {"microneedling": date(2026, 2, 23), "b": date(2026, 2, 24), "a": date(2026, 3, 2),
               "future": date(2026, 3, 3)}
    issue = weekly_issue(lib, date(2026, 3, 2), 9, sent_on=sent_on)
    assert slugs(issue) == ["b", "a"]  # sending order, not published order
    assert issue.kind == "weekly" and issue.key == "2026-03-02-weekly" and issue.number == 9


def test_weekly_from_published_dates_and_topic(lib):
    assert slugs(weekly_issue(lib, date(2023, 3, 5), 1)) == ["a", "b"]
    assert slugs(weekly_issue(lib, date(2023, 3, 5), 1, audience_topic="hair-loss")) == ["b"]
    assert weekly_issue(lib, date(2024, 1, 7), 1) is None
    assert weekly_issue(lib, date(2026, 3, 2), 1, sent_on={}) is None
