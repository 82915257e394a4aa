"""Render stage: an ``Issue`` to a ``RenderedIssue`` (subject, preheader, HTML, text).

Once per issue, never per subscriber:

1. Jinja2 renders the MJML templates in ``templates/email/`` (autoescape on,
   ``StrictUndefined``); article bodies come from ``pipeline.content.markup.to_html``,
   already sanitised by nh3, and the legal text's links from ``pipeline.content.legal``.
2. mjml-python compiles them with ``fonts={}`` (no Google Fonts) and a system
   font stack; ``<mjml lang=... dir="ltr">`` gives the ``<html>`` attributes.  The
   preheader goes first in ``<body>``, hidden by layout, not by colour.
3. ``pipeline.rendering.styles`` inlines ``inline.css`` with premailer, adds ``head.css``
   (phones, dark mode, the body's typography) as one ``<style>`` block, minifies, and
   puts back the ``<!DOCTYPE html>`` premailer drops.
4. The result is checked (doctype, lang, one h1, https links, no script...) and a
   failure is a ``RenderError``, so a broken email is never handed to delivery.

The text part comes from ``templates/text/issue.txt`` with links as ``<n>``
footnotes.  Per-subscriber values stay as ``pipeline.rendering.issue.PLACEHOLDERS`` for
``personalise`` to fill in.
"""
from __future__ import annotations

import re
import unicodedata
from datetime import date
from functools import lru_cache
from html import escape, unescape
from pathlib import Path
from typing import Any

import jinja2
import lxml.html
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup
from mjml import mjml2html

from pipeline.content import legal, markup, plaintext
from pipeline.content.article import Article
from pipeline.errors import RenderError
from pipeline.rendering import styles
from pipeline.rendering.issue import PLACEHOLDERS, Issue, RenderedIssue
from pipeline.settings import Settings

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
KB = 1024
WARN_BYTES = 90 * KB  # leave headroom below Gmail's clipping
CLIP_BYTES = 102 * KB  # Gmail clips a message whose HTML is longer than this
WORDS_PER_MINUTE = 200
DOCTYPE = styles.DOCTYPE
FORBIDDEN_TAGS = ("script", "form", "iframe", "object", "embed", "frame", "frameset", "base")


# -- URLs -------------------------------------------------------------------------

def article_url(settings: Settings, article: Article) -> str:
    return f"{settings.base_url.rstrip('/')}/articles/{article.slug}/"


def issue_url(settings: Settings, issue: Issue) -> str:
    """The issue's web copy ("view in browser"). Keyed by date, never by topic."""
    return f"{settings.base_url.rstrip('/')}/issues/{issue.key}/"


def citation_href(settings: Settings, article: Article):
    """Citations link to the reference on the article's web page: a fragment-only
    link (#ref-1) does nothing in many mail clients."""
    base = article_url(settings, article)
    return lambda number: f"{base}#ref-{number}"


# -- subject and preheader -----------------------------------------------------------

def one_line(value: str) -> str:
    """Whitespace collapsed and control characters removed: a value that can go into a
    header without starting a new one (CR/LF can never survive)."""
    cleaned = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in value)
    return " ".join(cleaned.split())


def is_sensitive(issue: Issue, settings: Settings) -> bool:
    """True when the issue reaches people through a sensitive topic only: it goes to one
    sensitive topic's audience, or every topic of its articles is sensitive (so each
    recipient who chose topics chose a health condition)."""
    if issue.audience_topic is not None:
        return issue.audience_topic in settings.sensitive_topics
    return bool(issue.topics) and set(issue.topics) <= settings.sensitive_topics


def subject_and_preheader(issue: Issue, settings: Settings) -> tuple[str, str]:
    """The subject (from ``subject_template``) and the preheader (the lead's summary).

    When the issue goes only to the subscribers of a sensitive topic both are the
    neutral wording from settings: a glance at an inbox must not reveal a health interest.
    """
    if is_sensitive(issue, settings):
        subject, preheader = settings.neutral_subject, settings.neutral_preheader
    else:
        subject = _subject_template(settings.subject_template).render(
            title=_subject_title(issue), date=issue.date, date_label=long_date(issue.date),
            number=issue.number, publication_name=settings.publication_name, kind=issue.kind,
            count=len(issue.articles))
        preheader = issue.lead.summary
    subject, preheader = one_line(subject), one_line(preheader)
    if not subject:
        raise RenderError(f"issue {issue.key}: the subject is empty (check subject_template and the lead's title)")
    return subject, preheader


def _subject_title(issue: Issue) -> str:
    if issue.kind == "weekly":
        more = len(issue.articles) - 1
        return f"This week: {issue.lead.title}" + (f" and {more} more" if more else "")
    return issue.lead.title


@lru_cache(maxsize=8)
def _subject_template(source: str) -> jinja2.Template:
    # sandboxed: the template is editorial text from site.yaml; autoescape off: a subject is not HTML
    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"subject_template is not a valid template: {exc.message}") from None


def long_date(day: date) -> str:
    return f"{day:%A} {day.day} {day:%B} {day.year}"


def short_date(day: date) -> str:
    return f"{day.day} {day:%B} {day.year}"


# -- the context both templates see ---------------------------------------------------

def _article_values(article: Article, settings: Settings, *, full: bool) -> dict[str, Any]:
    values: dict[str, Any] = {
        "slug": article.slug,
        "title": article.title,
        "summary": article.summary,
        "url": article_url(settings, article),
        "author": article.author,
        "reading_minutes": max(1, round(len(article.body.split()) / WORDS_PER_MINUTE)),
        # medical sign-off of this version (pipeline.review.reviews.attach), or ""
        "reviewed": (f"Medically reviewed by {article.reviewed_by} on {short_date(article.reviewed_on)}"
                     if article.reviewed_by and article.reviewed_on else ""),
    }
    if full:
        # the standfirst is left out when it would only repeat the body's opening
        values["standfirst"] = "" if markup.repeats_opening(article.summary, article.body) else article.summary
        values["references"] = [
            {"number": ref.number, "text": ref.text,
             # only https URLs become links (every link in the email is https); http ones stay visible
             # as text, and anything else (the loader refuses it) is not shown at all
             "url": ref.url if ref.url and ref.url.startswith(("https://", "http://")) else None,
             "link": ref.url if ref.url and ref.url.startswith("https://") else None,
             "cited": short_date(ref.cited) if ref.cited else None}
            for ref in article.references
        ]
    return values


def _context(issue: Issue, settings: Settings, subject: str, preheader: str, web_url: str) -> dict[str, Any]:
    publisher = dict(settings.publisher)
    office = publisher.get("registered_office") or []
    publisher["registered_office"] = [office] if isinstance(office, str) else list(office)
    base = settings.base_url.rstrip("/")
    weekly = issue.kind == "weekly"
    return {
        "language": settings.language,
        "subject": subject,
        "preheader": preheader,
        "publication_name": settings.publication_name,
        "issue_label": f"{'Week ending ' if weekly else ''}{long_date(issue.date)} · Issue {issue.number}",
        "kicker": "This week's articles" if weekly else "Today's article",
        "digest_label": "Also this week" if weekly else "More from the library",
        "greeting": PLACEHOLDERS["greeting"],
        "lead": _article_values(issue.lead, settings, full=True),
        "digest": [_article_values(a, settings, full=False) for a in issue.articles[1:]],
        "disclaimer": settings.disclaimer,
        "privacy_notice": legal.email_privacy_notice(settings),
        "terms_notice": settings.terms_notice,
        "why_you_get_this": settings.why_you_get_this.format(publication_name=settings.publication_name),
        "publisher": publisher,
        "home_url": f"{base}/",
        "web_url": web_url,
        "unsubscribe_url": PLACEHOLDERS["unsubscribe_url"],
        "preferences_url": PLACEHOLDERS["preferences_url"],
    }


# -- HTML ------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def email_environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES / "email"),
        autoescape=True,  # .mjml is not in select_autoescape's list: always on, for every value
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        # mjml-python (mrml) rejects "</mj-preview> <mj-attributes>" but accepts a newline between
        # them: keep each included part's final newline
        keep_trailing_newline=True,
    )


def render_mjml(issue: Issue, settings: Settings, subject: str, preheader: str, web_url: str) -> str:
    context = _context(issue, settings, subject, preheader, web_url)
    lead = issue.lead
    # sanitised by nh3 in to_html, hence Markup: autoescape must not escape it again
    body = _unlink_non_https(_unwrap_dead_links(markup.to_html(lead.body, citation_href(settings, lead), email=True)))
    context["lead"]["body_html"] = Markup(body)
    # the legal text escaped, its phrases linked (pipeline.content.legal decides which, and where to)
    for name in ("disclaimer", "privacy_notice", "terms_notice"):
        context[name] = legal.html(context[name], settings)
    context["privacy_policy"] = legal.policy_html(settings)
    try:
        return email_environment().get_template("layout.mjml").render(context)
    except jinja2.TemplateError as exc:
        raise RenderError(f"issue {issue.key}: email template failed: {exc}") from None


_DEAD_LINK = re.compile(r"<a\b(?![^>]*\shref=)[^>]*>(.*?)</a>", re.S)


def _unwrap_dead_links(html: str) -> str:
    """Keep the text of links nh3 took the URL from (``javascript:`` and the like):
    an ``<a>`` without href is no link, and every link in the email must be https."""
    return _DEAD_LINK.sub(r"\1", html)


# nh3 output: attribute values are double-quoted and escaped
_NON_HTTPS_LINK = re.compile(r'<a\b[^>]*?\shref="(?!https://)([^"]*)"[^>]*>(.*?)</a>', re.S)


def _unlink_non_https(html: str) -> str:
    """``http:`` and ``mailto:`` links (which ``newsletter check`` accepts) become text with
    the address shown, as http references do: every link in the email must be https."""
    def text(match: re.Match) -> str:
        shown = match.group(1).removeprefix("mailto:")
        return match.group(2) if shown == match.group(2) else f"{match.group(2)} ({shown})"
    return _NON_HTTPS_LINK.sub(text, html)


def non_https_links(markdown: str) -> list[str]:
    """The body links the email shows as text (see ``_unlink_non_https``), for warnings."""
    return [unescape(m.group(1)) for m in _NON_HTTPS_LINK.finditer(markup.to_html(markdown, lambda n: "https://x/"))]


def compile_mjml(source: str) -> str:
    try:
        # fonts={}: mjml would otherwise link Google Fonts (a request per open, and a tracker)
        return mjml2html(source, fonts={}, disable_comments=True)
    except Exception as exc:  # mjml-python raises plain exceptions for invalid MJML
        raise RenderError(f"MJML did not compile: {exc}") from None


# Hidden by layout, not by colour: white text on the page colour (mj-preview's way) is the
# "low-contrast text" spam filters score (SpamAssassin HTML_FONT_LOW_CONTRAST).
PREHEADER_STYLE = "display:none;max-height:0;max-width:0;opacity:0;overflow:hidden;mso-hide:all"


def add_preheader(html: str, preheader: str) -> str:
    """The preheader (the inbox preview line) as the body's first element, hidden when opened."""
    div = f'<div class="preheader" style="{PREHEADER_STYLE}">{escape(preheader, quote=False)}</div>'
    out, count = re.subn(r"(<body\b[^>]*>)", lambda m: m.group(1) + div, html, count=1)
    if count != 1:
        raise RenderError("the compiled email has no <body>")
    return out


def inline_css(html: str, *, compact: bool = True) -> str:
    """CSS inlined, head styles added and (``compact``) minified: ``pipeline.rendering.styles``."""
    return styles.finish(html, compact=compact)


def check_html(html: str, subject: str) -> None:
    """Refuse an email that breaks the checklist in a way rendering could cause."""
    if not html.startswith(DOCTYPE):
        raise RenderError("the HTML does not start with <!DOCTYPE html>")
    doc = lxml.html.document_fromstring(html)
    if doc.get("lang") in (None, "", "und") or doc.get("dir") != "ltr":
        raise RenderError(f"<html> has lang={doc.get('lang')!r} dir={doc.get('dir')!r}")
    title = doc.findtext(".//title") or ""
    if title != subject:
        raise RenderError(f"<title> {title!r} is not the subject {subject!r}")
    h1 = doc.xpath("//h1")
    if len(h1) != 1:
        raise RenderError(f"the email has {len(h1)} h1 elements, not exactly one")
    for tag in FORBIDDEN_TAGS:
        if doc.xpath(f"//{tag}"):
            raise RenderError(f"the email contains a <{tag}>")
    for element in doc.iter():
        if not isinstance(element.tag, str):
            continue
        if any(name.lower().startswith("on") for name in element.attrib):
            raise RenderError(f"<{element.tag}> has an event handler attribute")
        if element.tag == "img" and "alt" not in element.attrib:
            raise RenderError(f"<img src={element.get('src')!r}> has no alt")
        if element.tag == "link" and "stylesheet" in (element.get("rel") or "").lower():
            raise RenderError("the email links an external stylesheet")
        if element.tag == "a":
            href = element.get("href") or ""
            if not href.startswith("https://"):
                raise RenderError(f"link {href!r} is not absolute https")
            if not (element.text_content().strip() or element.get("aria-label") or element.xpath(".//img[@alt!='']")):
                raise RenderError(f"link {href!r} has no accessible name")
    if re.search(r"@import|fonts\.googleapis", html, re.I):
        raise RenderError("the email imports a stylesheet or a web font")


# -- text ---------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def text_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES / "text"),
        autoescape=False,  # text/plain is not HTML; values are made plain text beforehand
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["wrap"] = plaintext.wrap
    env.filters["underline"] = plaintext.underline
    return env


def _plain_values(value: Any) -> Any:
    if isinstance(value, str):
        # one paragraph per value, as the content loader makes them; the template wraps it
        return " ".join(plaintext.plain(value).split())
    if isinstance(value, dict):
        return {k: _plain_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_values(v) for v in value]
    return value


def render_text(issue: Issue, settings: Settings, web_url: str, subject: str = "", preheader: str = "") -> str:
    context = _plain_values(_context(issue, settings, subject, preheader, web_url))
    for values in [context["lead"], *context["digest"]]:
        author = values["author"]
        values["author"] = _plain_values({"name": author.name, "credentials": author.credentials, "bio": author.bio})
    # links are <n>, citations [n]: a marker is one or the other at a glance
    footnotes = plaintext.Footnotes()
    context["footnotes"] = footnotes
    context["link"] = footnotes.mark
    # callables, like body(): each link is numbered where the template reaches it
    for name in ("disclaimer", "privacy_notice", "terms_notice"):
        context[name] = (lambda text: lambda: legal.plain(text, settings, footnotes.mark))(context[name])
    context["privacy_policy"] = lambda: legal.policy_plain(settings, footnotes.mark)
    # a callable, so the body's links are numbered in reading order with the template's
    context["body"] = lambda: plaintext.body_text(issue.lead.body, footnotes)
    try:
        text = text_environment().get_template("issue.txt").render(context)
    except jinja2.TemplateError as exc:
        raise RenderError(f"issue {issue.key}: text template failed: {exc}") from None
    lines = [line.rstrip() for line in text.splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"
    return text


# -- the stage ------------------------------------------------------------------------------

def render_issue(issue: Issue, settings: Settings) -> RenderedIssue:
    """Render an issue once: subject, preheader, inlined HTML and plain text, with
    per-subscriber placeholders left for ``personalise``."""
    subject, preheader = subject_and_preheader(issue, settings)
    web_url = issue_url(settings, issue)
    html = inline_css(add_preheader(compile_mjml(render_mjml(issue, settings, subject, preheader, web_url)), preheader))
    check_html(html, subject)
    text = render_text(issue, settings, web_url, subject, preheader)
    warnings: list[str] = []
    for ref in issue.lead.references:
        if ref.url and not ref.url.startswith("https://"):
            warnings.append(f"{issue.lead.slug}: reference {ref.number} URL is not https, so it is shown as text, not a link")
    for url in non_https_links(issue.lead.body):
        warnings.append(f"{issue.lead.slug}: body link {url} is not https, so it is shown as text, not a link")
    size = len(html.encode("utf-8"))
    if size >= CLIP_BYTES:
        raise RenderError(f"issue {issue.key}: the HTML is {size / KB:.1f} KB; Gmail clips above {CLIP_BYTES // KB} KB. "
                          "Shorten the issue (fewer digest articles) or the article.")
    if size > WARN_BYTES:
        warnings.append(f"the HTML is {size / KB:.1f} KB, close to Gmail's {CLIP_BYTES // KB} KB clipping limit")
    return RenderedIssue(issue=issue, subject=subject, preheader=preheader, html=html, text=text,
                         web_url=web_url, warnings=tuple(warnings))
