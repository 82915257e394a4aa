"""What an article page tells machines about itself: Open Graph and Twitter card
``<meta>`` tags and schema.org JSON-LD (``MedicalWebPage``); and the feeds' rights line.

Every URL is absolute, under ``base_url`` (with its path prefix). The JSON-LD is
escaped for a ``<script>`` element: no ``<``, ``>`` or ``&`` survives, so no text from
an article can close the element.
"""
from __future__ import annotations

import json
from datetime import date

from pipeline.content.article import Author, Reviewer
from pipeline.settings import Settings
from pipeline.site import icons


def og_locale(language: str) -> str:
    """'en-GB' -> 'en_GB' (Open Graph writes locales with an underscore)."""
    return language.replace("-", "_")


def publisher_name(settings: Settings) -> str:
    publisher = settings.publisher or {}
    return str(publisher.get("company_name") or settings.publication_name)


def rights_line(settings: Settings, year: int) -> str:
    """The feeds' rights line (Atom <rights>, RSS <copyright>): the publisher from the
    settings and ``year`` (the newest item's, so a rebuild gives the same line)."""
    line = f"© {year} {publisher_name(settings)}. All rights reserved."
    number = (settings.publisher or {}).get("company_number")
    return f"{line} Company number {number}." if number else line


def article_meta(view, settings: Settings) -> list[tuple[str, str, str]]:
    """(attribute, name, content) for each Open Graph / Twitter ``<meta>`` of an article page.
    The image is the article's lead image, or the site icon."""
    article = view.article
    image = view.image
    rows = [
        ("property", "og:type", "article"),
        ("property", "og:site_name", settings.publication_name),
        ("property", "og:locale", og_locale(settings.language)),
        ("property", "og:title", article.title),
        ("property", "og:description", article.summary),
        ("property", "og:url", view.url),
        ("property", "og:image", image.src if image else settings.url(f"/{icons.ICON}")),
        ("property", "og:image:alt", image.alt if image else settings.publication_name),
    ]
    if image and image.width and image.height:
        rows += [("property", "og:image:width", str(image.width)), ("property", "og:image:height", str(image.height))]
    rows += [
        ("property", "article:published_time", view.published_at.isoformat()),
        ("property", "article:modified_time", view.updated_at.isoformat()),
        ("property", "article:author", article.author.name),
        ("name", "twitter:card", "summary_large_image" if image else "summary"),
        ("name", "twitter:title", article.title),
        ("name", "twitter:description", article.summary),
        ("name", "twitter:image", image.src if image else settings.url(f"/{icons.ICON}")),
        ("name", "twitter:image:alt", image.alt if image else settings.publication_name),
    ]
    return rows


def _person(author: Author, url: str | None = None) -> dict:
    person = {"@type": "Person", "name": author.name}
    if author.credentials:
        person["hasCredential"] = {"@type": "EducationalOccupationalCredential", "name": author.credentials}
    if getattr(author, "bio", ""):
        person["description"] = author.bio
    if getattr(author, "photo", None):
        person["image"] = author.photo
    if url:
        person["url"] = url
    return person


def article_jsonld(view, settings: Settings) -> dict:
    """The schema.org ``MedicalWebPage`` of an article page."""
    article = view.article
    home = settings.url("/")
    data = {
        "@context": "https://schema.org",
        "@type": "MedicalWebPage",
        "@id": view.url,
        "url": view.url,
        "name": article.title,
        "headline": article.title,
        "description": article.summary,
        "inLanguage": settings.language,
        "datePublished": view.published_at.isoformat(),
        "dateModified": view.updated_at.isoformat(),
        "author": _person(article.author, f"{view.url}#section-author"),
        "publisher": {"@type": "Organization", "name": publisher_name(settings), "url": home,
                      "logo": {"@type": "ImageObject", "url": settings.url(f"/{icons.ICON}"),
                               "width": icons.PNGS[icons.ICON][0], "height": icons.PNGS[icons.ICON][1]}},
        "isPartOf": {"@type": "WebSite", "name": settings.publication_name, "url": home},
    }
    if view.image:
        data["image"] = view.image.src
    if article.reviewed_by is not None and article.reviewed_on is not None:
        data["lastReviewed"] = article.reviewed_on.isoformat()
        data["reviewedBy"] = _person(article.reviewed_by)
    return data


def script_json(data: dict) -> str:
    """``data`` as JSON safe inside ``<script type="application/ld+json">``."""
    text = json.dumps(data, ensure_ascii=False, indent=1)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def reviewed(view) -> tuple[Reviewer, date] | None:
    article = view.article
    if article.reviewed_by is None or article.reviewed_on is None:
        return None
    return article.reviewed_by, article.reviewed_on
