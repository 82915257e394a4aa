"""The issue page ("view in browser"): the email's HTML made into a web page.

The rendered issue is an email; on the web some of it is wrong or pointless. The page
keeps the email's look and drops what only makes sense in an inbox:

- the "View this email in your browser" line and every other link to the page itself;
- the footer's "You are receiving this email because..." (``why_you_get_this``);
- the hidden preheader (the inbox preview line).

It gains what a web page needs: a ``<meta charset>`` (the email's is lost in serialising; its
MIME part says it), a canonical link, the feeds' autodiscovery links and a
visible line linking them and the archive, the favicon, a ``<main>`` landmark around
the content, and a meta description. Parsed and written with lxml, never by string
surgery, so the result is well-formed whatever the email's markup.
"""
from __future__ import annotations

import re

import lxml.html
from lxml import etree

from pipeline.settings import Settings
from pipeline.site import icons

HIDDEN = re.compile(r"display\s*:\s*none", re.IGNORECASE)
INK, LINK = "#1f2933", "#0b5c8a"


def _words(text: str) -> str:
    return " ".join(text.split())


def _drop(element) -> None:
    """Remove ``element`` but keep the text after it (lxml keeps it in ``tail``)."""
    parent = element.getparent()
    if parent is None:
        return
    if element.tail and element.tail.strip():
        previous = element.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + element.tail
        else:
            parent.text = (parent.text or "") + element.tail
    parent.remove(element)


def _drop_with_empty_ancestors(element, stop) -> None:
    """Remove ``element``, and the outermost ancestor (below ``stop``) that holds nothing
    else: no text and no image left once ``element`` is gone."""
    own = _words(element.text_content())
    target = element
    parent = element.getparent()
    while parent is not None and parent is not stop and parent.tag not in ("body", "main"):
        if parent.get("role") == "article" or _words(parent.text_content()) != own or parent.xpath(".//img"):
            break
        target, parent = parent, parent.getparent()
    _drop(target)


def web_copy(html: str, settings: Settings, page_url: str, feeds: list[dict[str, str]], description: str) -> str:
    """The web page of an issue whose personalised email HTML is ``html``."""
    doc = lxml.html.document_fromstring(html)
    body = doc.find("body")
    head = doc.find("head")
    if body is None or head is None:
        raise ValueError("the issue's HTML has no head or body")
    for link in body.xpath(".//a[@href]"):
        if link.get("href").split("#")[0] == page_url:
            _drop_with_empty_ancestors(link, body)
    why = _words(settings.why_you_get_this.format(publication_name=settings.publication_name))
    for element in body.xpath(".//p | .//div[not(.//div) and not(.//p)]"):
        if why and _words(element.text_content()) == why:
            _drop(element)
    for element in body.xpath("./div[@style]"):
        if HIDDEN.search(element.get("style", "")):
            _drop(element)  # the preheader: an inbox preview, not part of the page
    for element in body.xpath(".//*[@aria-roledescription]"):
        del element.attrib["aria-roledescription"]  # "email"

    main = etree.Element("main", id="main")
    main.text, body.text = body.text, None
    for child in list(body):
        main.append(child)
    body.append(main)
    main.append(_feeds_nav(settings, feeds))

    def add(tag: str, **attributes: str) -> None:
        element = etree.SubElement(head, tag)
        for name, value in attributes.items():
            element.set(name.rstrip("_").replace("_", "-"), value)

    # one <meta charset>, first (libxml2 drops an http-equiv Content-Type when it serialises):
    # a saved copy must read as UTF-8 too
    for old in head.xpath("meta[@charset] | meta[translate(@http-equiv, 'CONTENT-TYPE', 'content-type')='content-type']"):
        _drop(old)
    head.insert(0, etree.Element("meta", charset="utf-8"))
    add("link", rel="canonical", href=page_url)
    add("meta", name="description", content=description)
    add("link", rel="icon", href=settings.url(f"/{icons.FAVICON_SVG}"), type="image/svg+xml")
    add("link", rel="icon", href=settings.url(f"/{icons.FAVICON_PNG}"), type="image/png", sizes="64x64")
    for feed in feeds:
        add("link", rel="alternate", type=feed["type"], title=feed["title"], href=feed["href"])
    return "<!DOCTYPE html>\n" + lxml.html.tostring(doc, encoding="unicode") + "\n"


def _feeds_nav(settings: Settings, feeds: list[dict[str, str]]):
    nav = etree.Element("nav", {"aria-label": f"More from {settings.publication_name}",
                                "style": f"max-width:600px;margin:0 auto;padding:8px 20px 32px;text-align:center;"
                                         f"font-family:-apple-system,BlinkMacSystemFont,'Segoe UI',Roboto,Helvetica,"
                                         f"Arial,sans-serif;font-size:15px;line-height:1.6;color:{INK}"})
    paragraph = etree.SubElement(nav, "p")
    archive = etree.SubElement(paragraph, "a", href=settings.url("/"), style=f"color:{LINK}")
    archive.text = "All issues and articles"
    archive.tail = " · Follow by feed: "
    for i, feed in enumerate(feeds):
        link = etree.SubElement(paragraph, "a", href=feed["href"], style=f"color:{LINK}")
        link.text = feed["label"]
        link.tail = ", " if i < len(feeds) - 1 else ""
    return nav
