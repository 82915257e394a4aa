"""The notice email of a significant correction or a retraction.

``render_notice`` gives a ``RenderedIssue`` like an issue's (rendered once, with the
per-subscriber placeholders of ``pipeline.rendering.issue``), so the delivery stage
builds, personalises and sends it exactly as it sends issues.  Its ``Issue`` is of
kind ``correction``, numbered by the correction's id and keyed
``<day>-correction-n<id>``: the ledger keeps its rows apart from every issue's.

It says the title, the note and links to the corrected page (a retraction: to the
notice that replaced it).  Like every email, it keeps the neutral subject rule: when
any of the article's topics is sensitive, neither the subject nor the preheader names
the article (a glance at an inbox must not reveal a health interest).  The HTML passes
``check_html``, as issues do.
"""
from __future__ import annotations

from pipeline.content.article import Article
from pipeline.corrections.records import Correction
from pipeline.errors import RenderError
from pipeline.rendering.issue import PLACEHOLDERS, Issue, RenderedIssue
from pipeline.rendering.render import (add_preheader, article_url, check_html, compile_mjml, email_environment,
                                       inline_css, one_line, short_date, text_environment)
from pipeline.settings import Settings

KIND = "correction"  # the ledger's issue kind for every notice


def notice_key_label(correction_id: int) -> str:
    return f"n{correction_id}"


def notice_issue(correction: Correction, article: Article, settings: Settings) -> Issue:
    """The notice as an ``Issue`` for the ledger: dated the day the correction was recorded."""
    return Issue(date=correction.local_day(settings.timezone), number=correction.id, articles=(article,),
                 kind=KIND, audience_label=notice_key_label(correction.id))


def is_sensitive(article: Article, settings: Settings) -> bool:
    """True when any topic of the article is sensitive: the notice reaches people who got the
    article through that topic's issues too."""
    return bool(set(article.topics) & settings.sensitive_topics)


def subject_and_preheader(correction: Correction, article: Article, settings: Settings) -> tuple[str, str]:
    what = "retraction" if correction.retraction else "correction"
    if is_sensitive(article, settings):
        subject = f"A {what} from {settings.publication_name}"
        preheader = ("We have withdrawn an article we sent you." if correction.retraction
                     else "We have corrected an article we sent you.")
    else:
        subject = f"{what.capitalize()}: {article.title}"
        preheader = correction.note
    subject, preheader = one_line(subject), one_line(preheader)
    return subject[:200], preheader[:200]


def _context(correction: Correction, article: Article, settings: Settings, subject: str, preheader: str) -> dict:
    publisher = dict(settings.publisher)
    office = publisher.get("registered_office") or []
    publisher["registered_office"] = [office] if isinstance(office, str) else list(office)
    if correction.retraction:
        heading = f"We have withdrawn “{article.title}”"
        intro = (f"You received “{article.title}” from {settings.publication_name}. We have retracted it, "
                 "and it is no longer on our website.")
        advice = ("Please do not rely on what it said. If you acted on it, talk to your doctor or pharmacist.")
        link_text = "Read the retraction notice"
    else:
        heading = f"A correction to “{article.title}”"
        intro = f"You received “{article.title}” from {settings.publication_name}. We have corrected it since we sent it."
        advice = "The article on our website now has the corrected text. If you acted on the earlier version, " \
                 "please read it again."
        link_text = "Read the corrected article"
    return {
        "language": settings.language,
        "subject": subject,
        "preheader": preheader,
        "publication_name": settings.publication_name,
        "greeting": PLACEHOLDERS["greeting"],
        "heading": heading,
        "intro": intro,
        "label": "Retraction" if correction.retraction else "Correction",
        "day_label": short_date(correction.local_day(settings.timezone)),
        "note": correction.note,
        "advice": advice,
        "link_text": link_text,
        "article_url": article_url(settings, article),
        "disclaimer": settings.disclaimer,
        "why_you_get_this": settings.why_you_get_this.format(publication_name=settings.publication_name),
        "publisher": publisher,
        "home_url": settings.url("/"),
        "unsubscribe_url": PLACEHOLDERS["unsubscribe_url"],
        "preferences_url": PLACEHOLDERS["preferences_url"],
    }


def render_notice(correction: Correction, article: Article, settings: Settings) -> RenderedIssue:
    """The notice, rendered once; refused with a ``RenderError`` when it breaks the checklist."""
    import jinja2

    if not correction.notifies:
        raise RenderError(f"correction {correction.id} is minor: only a significant correction or a retraction "
                          "is mailed")
    subject, preheader = subject_and_preheader(correction, article, settings)
    context = _context(correction, article, settings, subject, preheader)
    try:
        mjml = email_environment().get_template("correction.mjml").render(context)
        text = text_environment().get_template("correction.txt").render(context)
    except jinja2.TemplateError as exc:
        raise RenderError(f"correction {correction.id}: notice template failed: {exc}") from None
    html = inline_css(add_preheader(compile_mjml(mjml), preheader))
    check_html(html, subject)
    text = "\n".join(line.rstrip() for line in text.splitlines()).strip("\n") + "\n"
    issue = notice_issue(correction, article, settings)
    return RenderedIssue(issue=issue, subject=subject, preheader=preheader, html=html, text=text,
                         web_url=article_url(settings, article))
