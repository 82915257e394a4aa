"""An issue and its rendered form.

``Issue`` is what the compose stage gives: a date, a number and one or more
articles (the first in full, the rest as a digest).  ``RenderedIssue`` is what
the render stage gives: the email's subject, preheader, HTML and text, rendered
once, with per-subscriber values left as placeholders.  ``personalise`` fills
them in cheaply and safely for one subscriber; no MJML compile and no CSS
inlining happens per subscriber.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from html import escape

from pipeline.content.article import Article

# Placeholders are absolute https URLs on a reserved (.invalid) domain, so the
# rendered-but-unpersonalised HTML still passes the "every link is absolute
# https" rule, and premailer/mjml leave them alone.  Each is replaced verbatim.
PLACEHOLDERS = {
    "unsubscribe_url": "https://personalise.invalid/unsubscribe-url",
    "preferences_url": "https://personalise.invalid/preferences-url",
    "greeting": "PERSONALISE-GREETING-7f3a",
}


def issue_key(day: date, kind: str = "daily", audience_label: str | None = None) -> str:
    """``2026-03-02``, ``2026-03-02-weekly``, or either with an audience's opaque label."""
    key = day.isoformat() if kind == "daily" else f"{day.isoformat()}-{kind}"
    return f"{key}-{audience_label}" if audience_label else key


@dataclass(frozen=True)
class Issue:
    date: date
    number: int
    articles: tuple[Article, ...]
    # set when the issue goes only to the subscribers of one topic; if that topic is
    # sensitive the subject and preheader are neutral (see render)
    audience_topic: str | None = None
    kind: str = "daily"  # or "weekly"
    # opaque label of the audience (subscribers.tokens.audience_label), so a topic's
    # issue and the general one of the same day have different keys, and neither
    # the key nor the archive URL names the topic
    audience_label: str | None = None

    @property
    def lead(self) -> Article:
        return self.articles[0]

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic of the issue's articles: who gets the issue (see
        ``pipeline.delivery.ledger``) and whether its subject must be neutral (``pipeline.rendering.render``)."""
        return tuple(sorted({topic for article in self.articles for topic in article.topics}))

    @property
    def key(self) -> str:
        """Stable identifier of the issue, used by the ledger and the archive URL."""
        return issue_key(self.date, self.kind, self.audience_label)


@dataclass(frozen=True)
class RenderedIssue:
    issue: Issue
    subject: str
    preheader: str
    html: str  # complete document, CSS inlined, placeholders in place
    text: str  # plain-text part, placeholders in place
    web_url: str  # the "view in browser" page of this issue
    warnings: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Personal:
    """One subscriber's values for personalise()."""

    unsubscribe_url: str
    preferences_url: str
    greeting: str = "Hello,"


def personalise(rendered: RenderedIssue, personal: Personal) -> tuple[str, str]:
    """Return (html, text) for one subscriber. Values are HTML-escaped in the HTML part."""
    html, text = rendered.html, rendered.text
    for key, placeholder in PLACEHOLDERS.items():
        value = getattr(personal, key)
        html = html.replace(placeholder, escape(value, quote=True))
        text = text.replace(placeholder, value)
    return html, text
