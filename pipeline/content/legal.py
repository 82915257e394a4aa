"""The legal text's links: one place decides which phrases link where.

The publisher's words (``disclaimer``, ``terms_notice``, ``privacy_notice`` in
``site.yaml``) mention pages they do not link: "our editorial standards",
"our terms and conditions".  Each phrase gets its URL from a setting
(``editorial_standards_url``, ``terms_url``); the privacy policy
(``privacy_policy_url``, which always has a value) is linked by a sentence of
ours after the privacy notice.  The email (HTML and text part), the article and
issue pages and the feed items all call the functions here, so they link the
same phrases to the same pages.

A URL that is unset, or not https, leaves its phrase as plain text, and
``problems`` gives ``newsletter check`` a warning for each phrase the legal text
mentions without a usable URL.  The words themselves never change on the web;
only the email says "this website" differently (``email_privacy_notice``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import urlsplit

from markupsafe import Markup, escape

from pipeline.settings import Settings


@dataclass(frozen=True)
class Phrase:
    words: str  # as the legal text says it, matched ignoring case and line breaks
    setting: str  # the setting holding its URL


PHRASES = (
    Phrase("editorial standards", "editorial_standards_url"),
    Phrase("terms and conditions", "terms_url"),
    Phrase("privacy policy", "privacy_policy_url"),
)
# the sentence of ours that links the privacy policy after the privacy notice
POLICY_SENTENCE = "Our privacy policy says what we keep, why, and for how long."
LEGAL_SETTINGS = ("disclaimer", "terms_notice", "privacy_notice")
# "this website" inside an email: information is given "to us"; elsewhere the site is "our website"
_TO_WEBSITE = re.compile(r"\bto this website\b", re.I)
_WEBSITE = re.compile(r"\bthis website\b", re.I)


def _pattern(phrase: Phrase) -> re.Pattern:
    words = r"\s+".join(re.escape(w) for w in phrase.words.split())
    return re.compile(rf"\b{words}\b", re.I)


def is_https_url(url: object) -> bool:
    if not isinstance(url, str) or any(c.isspace() or ord(c) < 32 for c in url):
        return False
    parts = urlsplit(url)
    return parts.scheme == "https" and bool(parts.netloc) and "@" not in parts.netloc


def url_for(phrase: Phrase, settings: Settings) -> str | None:
    """The phrase's URL, or None when its setting is unset or not an https URL."""
    url = getattr(settings, phrase.setting, "")
    return url if is_https_url(url) else None


def email_privacy_notice(settings: Settings) -> str:
    """The privacy notice as an email shows it: ``email_privacy_notice`` when set, else the
    publisher's notice with "to this website" read as "to us" and any other "this website" as
    "our website" (the words on the web pages stay exactly as the publisher wrote them)."""
    own = settings.get("email_privacy_notice") or ""
    if own.strip():
        return own
    return _WEBSITE.sub("our website", _TO_WEBSITE.sub("to us", settings.privacy_notice))


def _pieces(text: str, settings: Settings) -> Iterable[tuple[str, str | None]]:
    """``text`` cut into (piece, URL or None): each linked phrase is its own piece."""
    spans: list[tuple[int, int, str]] = []
    for phrase in PHRASES:
        url = url_for(phrase, settings)
        if url is None:
            continue
        for match in _pattern(phrase).finditer(text):
            if not any(s < match.end() and match.start() < e for s, e, _ in spans):
                spans.append((match.start(), match.end(), url))
    at = 0
    for start, end, url in sorted(spans):
        if start > at:
            yield text[at:start], None
        yield text[start:end], url
        at = end
    if at < len(text):
        yield text[at:], None


def html(text: str, settings: Settings, *, link_style: str = "") -> Markup:
    """``text`` escaped, each phrase with a URL a link to it. ``link_style`` is an inline
    style for emails; pages and feed items style links themselves."""
    style = f' style="{escape(link_style)}"' if link_style else ""
    out = []
    for piece, url in _pieces(text, settings):
        out.append(Markup(f'<a href="{escape(url)}"{style}>{escape(piece)}</a>') if url else escape(piece))
    return Markup("").join(out)


def plain(text: str, settings: Settings, mark: Callable[[str], str]) -> str:
    """``text`` for a text/plain part: each phrase with a URL followed by its footnote marker."""
    return "".join(f"{piece} {mark(url)}" if url else piece for piece, url in _pieces(text, settings))


def policy_html(settings: Settings, *, link_style: str = "") -> Markup:
    return html(POLICY_SENTENCE, settings, link_style=link_style)


def policy_plain(settings: Settings, mark: Callable[[str], str]) -> str:
    return plain(POLICY_SENTENCE, settings, mark)


def problems(settings: Settings) -> list[tuple[tuple[str, ...], str]]:
    """(settings to point at, message) for ``newsletter check``: a phrase the legal text mentions
    whose URL is unset or not https, so readers see the phrase without a link. The first of the
    settings that is in site.yaml gives the line."""
    texts = {name: settings.get(name) or "" for name in (*LEGAL_SETTINGS, "email_privacy_notice")}
    found = []
    for phrase in PHRASES:
        where = [name for name, text in texts.items() if isinstance(text, str) and _pattern(phrase).search(text)]
        if phrase.setting == "privacy_policy_url":
            raw = settings.privacy_policy_url  # never empty: it defaults to /privacy-policy on base_url's host
        else:
            raw = settings.get(phrase.setting) or ""
            if not where:
                continue
        said = " and the ".join(name.replace("_", " ") for name in where) or "privacy policy link"
        verb = "mentions" if len(where) <= 1 else "mention"
        if not raw:
            found.append(((phrase.setting, *where), f"the {said} {verb} \"{phrase.words}\" but "
                                                    f"{phrase.setting} is not set, so it is shown without a link"))
        elif not is_https_url(raw):
            found.append(((phrase.setting, *where), f"{phrase.setting} {raw!r} is not an https URL, so "
                                                    f"\"{phrase.words}\" is shown without a link"))
    return found
