"""The one-off emails of the subscription flow: confirmation (double opt-in),
"already subscribed", and welcome.

Each is multipart text + HTML built with ``EmailMessage``.  Nothing about the
person's topics appears in the subject, the headers or any URL (topics are
health data); the tokens in the links are opaque.  Every header value is
built from settings or from cleaned fields, and CR/LF are stripped again
here.  Names are written by ``pipeline.mail.headers`` (a stored name that breaks the
name rule is left out), and every finished message is parsed back and must have
exactly the headers we set and the parts we built (``headers.check_finished``),
so a name typed into the form cannot add a header or a body.

The confirmation email carries no name at all, in To or in the greeting: anyone
can type any address and any name into the form, and a name in a greeting to a
stranger's inbox is a way to send them spam under our name.
"""
from __future__ import annotations

import json
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from pipeline import clock
from pipeline.mail.headers import check_finished, display_name, mailbox, unstructured
from subscribers import tokens
from subscribers.store import SubscriberInfo, consent_wording

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@lru_cache(maxsize=1)
def _env() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                       undefined=StrictUndefined, keep_trailing_newline=True)


def _safe(value: str) -> str:
    return " ".join((value or "").replace("\r", " ").replace("\n", " ").split())


def _message(settings, to: SubscriberInfo, subject: str, template: str, values: dict, *,
             with_name: bool = True) -> EmailMessage:
    name = display_name(to.name) if with_name else ""
    values = {"publication": settings.publication_name, "name": name or None, "address": to.email, "subject": subject,
              "language": settings.language, "privacy_notice": settings.privacy_notice,
              "company": settings.publisher.get("company_name", ""), **values}
    # policy.SMTP: CRLF line ends, which an SMTP relay requires (send_single passes the bytes through as they are)
    msg = EmailMessage(policy=policy.SMTP)
    # Subject, From and To are written by pipeline.mail.headers (folded, RFC 2047) and kept as they are
    msg.set_raw("Subject", unstructured("Subject", _safe(subject))[len("Subject: "):-2])
    msg.set_raw("From", _sender(settings)[0])
    msg.set_raw("To", mailbox(name, to.email)[0])
    if settings.reply_to:
        msg["Reply-To"] = settings.reply_to
    msg["Date"] = format_datetime(clock.now())
    msg["Message-ID"] = make_msgid(domain=settings.sender_domain)
    msg.set_content(_env().get_template(f"email/{template}.txt").render(values))
    msg.add_alternative(_env().get_template(f"email/{template}.html").render(values), subtype="html")
    return msg


def _sender(settings) -> tuple[str, str]:
    """(From value, the name it shows)."""
    return mailbox(display_name(_safe(settings.sender_name)), settings.sender_address, "From")


def _checked(settings, msg: EmailMessage, to: SubscriberInfo, subject: str, *, with_name: bool) -> EmailMessage:
    """``msg`` if its bytes read back as exactly what we built; ``DeliveryError`` otherwise."""
    name = mailbox(display_name(to.name) if with_name else "", to.email)[1]
    expected: dict = {header: None for header in msg.keys() if header != "Content-Type"}  # what we set...
    expected.update({"To": (name, to.email), "Subject": _safe(subject),  # ...and, where it matters, to what
                     "From": (_sender(settings)[1], settings.sender_address)})
    check_finished(msg.as_bytes(), expected, "email to " + to.email)
    return msg


def confirmation_message(settings, subscriber: SubscriberInfo, *, request=None, already: bool = False) -> EmailMessage:
    """The double opt-in email for one sign-up ``request`` (a ``SignupRequest``: its link
    names the request, and the email says its frequency and how many topics it chose,
    never which), or, when ``already``, a note with the preferences link."""
    wording, version = consent_wording(settings)
    chosen = {"frequency": request.frequency if request is not None else subscriber.frequency,
              "topic_count": len(json.loads(request.topics)) if request is not None else 0}
    if already:
        subject = f"You are already subscribed to {settings.publication_name}"
        links = {"preferences_url": tokens.preferences_url(settings, subscriber.id),
                 "unsubscribe_url": tokens.unsubscribe_url(settings, subscriber.id), "confirm_url": ""}
    else:
        subject = f"Please confirm your subscription to {settings.publication_name}"
        links = {"confirm_url": tokens.confirm_url(settings, request.id), "preferences_url": "",
                 "unsubscribe_url": ""}
    msg = _message(settings, subscriber, subject, "confirm",
                   {"already": already, "wording": wording, "version": version,
                    "days": settings.confirm_token_days, **chosen, **links}, with_name=False)
    return _checked(settings, msg, subscriber, subject, with_name=False)


def data_link_message(settings, subscriber: SubscriberInfo, link_id: int, minutes: int) -> EmailMessage:
    """The one-time link to download or delete one's data (``pipeline.privacy.access``)."""
    subject = f"Your data at {settings.publication_name}: your link"
    msg = _message(settings, subscriber, subject, "data_link",
                   {"data_url": tokens.data_url(settings, link_id), "minutes": minutes}, with_name=False)
    return _checked(settings, msg, subscriber, subject, with_name=False)


def welcome_message(settings, subscriber: SubscriberInfo, latest_url: str) -> EmailMessage:
    unsubscribe = tokens.unsubscribe_url(settings, subscriber.id)
    subject = f"Welcome to {settings.publication_name}"
    msg = _message(settings, subscriber, subject, "welcome",
                   {"latest_url": latest_url, "frequency": subscriber.frequency,
                    "preferences_url": tokens.preferences_url(settings, subscriber.id),
                    "unsubscribe_url": unsubscribe})
    # the welcome is the first list mail: one-click unsubscribe (RFC 8058) from day one
    mailto = settings.unsubscribe_mailto or f"unsubscribe@{settings.sender_domain}"
    msg["List-Unsubscribe"] = f"<{unsubscribe}>, <mailto:{mailto}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["List-Id"] = f"<{settings.list_id or 'daily.' + settings.sender_domain}>"
    return _checked(settings, msg, subscriber, subject, with_name=True)


def latest_issue_url(settings) -> str:
    """The newest ``public/issues/<key>/issue.json`` (by key) as a link, else the archive."""
    issues = Path(settings.public_dir) / "issues"
    try:
        keys = sorted((p.parent.name for p in issues.glob("*/issue.json")), reverse=True)
    except OSError:
        keys = []
    for key in keys:
        try:
            data = json.loads((issues / key / "issue.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        url = data.get("web_url") or data.get("url") if isinstance(data, dict) else None
        if isinstance(url, str) and url.startswith(settings.base_url + "/"):
            return url
        return f"{settings.base_url}/issues/{key}/"
    return f"{settings.base_url}/"
