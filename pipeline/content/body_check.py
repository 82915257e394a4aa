"""Checks of an article body (its Markdown) for ``newsletter check``: headings, citations,
links and images, each problem reported at the body's exact line.

``out`` is the content stage's problem collector (anything with ``error(path, line, message)``).
"""
from __future__ import annotations

import re
from html import unescape
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from pipeline.content import markup

# an href in raw HTML inside the Markdown (nh3 keeps relative ones)
HTML_HREF_RE = re.compile(r"""\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.I)


def is_absolute_http_url(url: str) -> bool:
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not any(c.isspace() for c in url)


def inline_lines(toks) -> Iterable[tuple[int, Any]]:
    """(line offset in the body, child token) for every inline child, counting the
    line breaks inside a paragraph so a problem points at its exact line."""
    for token in toks:
        if token.type != "inline" or not token.children:
            continue
        line = token.map[0] if token.map else 0
        for child in token.children:
            if child.type in ("softbreak", "hardbreak"):
                line += 1
            yield line, child


def citation_lines(body: str, toks: list | None = None) -> list[tuple[int, int]]:
    """(line offset, reference number) of every citation; ``toks``: the body already parsed."""
    return [(line, n) for line, child in inline_lines(toks if toks is not None else markup.tokens(body))
            if child.type == "citation"
            for n in child.meta["numbers"]]


def check_body(body: str, body_line: int, reference_count: int | None, path: Path, out: Any,
               toks: list | None = None) -> None:
    toks = toks if toks is not None else markup.tokens(body)
    # headings: no h1 (the title is the h1), no skipped levels, no empty sections
    last_level = 1
    open_heading: tuple[int, int] | None = None  # (level, line) of a heading with nothing under it yet
    for i, token in enumerate(toks):
        line = body_line + (token.map[0] if token.map else 0)
        if token.type == "heading_open":
            level = int(token.tag[1])
            if level == 1:
                out.error(path, line, "the body must not contain a level-1 heading: the title is the page's only h1")
            elif level > last_level + 1:
                out.error(path, line, f"heading level skips from h{last_level} to h{level}")
            if not toks[i + 1].content.strip():
                out.error(path, line, "empty heading")
            if open_heading and open_heading[0] >= level:
                out.error(path, open_heading[1], "empty section: a heading with no content before the next heading")
            open_heading = (level, line)
            last_level = level
        elif token.type in ("paragraph_open", "bullet_list_open", "ordered_list_open", "table_open",
                            "blockquote_open", "fence", "code_block", "html_block"):
            open_heading = None
    if open_heading:
        out.error(path, open_heading[1], "empty section: a heading with no content after it")
    for offset, child in inline_lines(toks):
        if child.type == "citation" and reference_count is not None:
            for number in child.meta["numbers"]:
                if not 1 <= number <= reference_count:
                    out.error(path, body_line + offset, f"citation [{number}] points to a reference that does not "
                              f"exist (there are {reference_count})")
        elif child.type == "image":
            _check_image(markup.image_of(child), body_line + offset, path, out)
        elif child.type == "html_inline":
            _check_html_hrefs(child.content, body_line + offset, path, out)
    # links from a parser that keeps every URL: the renderer's turns [x](javascript:...) into text
    for offset, child in inline_lines(markup.link_tokens(body, toks)):
        if child.type == "link_open":
            _check_link(child.attrGet("href") or "", body_line + offset, path, out)
    for token in toks:
        if token.type == "html_block":
            _check_html_hrefs(token.content, body_line + (token.map[0] if token.map else 0), path, out)


def link_scheme(url: str) -> str:
    """The scheme a browser would see: entities decoded, and the tabs, newlines and
    control characters it ignores removed ("java&#x09;script:" is "javascript:")."""
    cleaned = re.sub(r"[\x00-\x20\x7f]|%0[9ad]", "", unescape(url), flags=re.I)
    match = re.match(r"([a-z][a-z0-9+.-]*):", cleaned, re.I)
    return match.group(1).lower() if match else ""


def _check_link(url: str, line: int, path: Path, out: Any) -> None:
    """A body link is https or mailto: anything else (javascript:, data:, http:, a relative
    path) cannot be a working, safe link in an email."""
    scheme = link_scheme(url)
    if scheme == "mailto" and "@" in url:
        return
    if scheme == "https" and is_absolute_http_url(url):
        return
    out.error(path, line, f"link URL is not absolute https (or mailto): {url!r}")


def _check_image(image: markup.Image, line: int, path: Path, out: Any) -> None:
    if not (image.src.startswith("https://") and is_absolute_http_url(image.src)):
        out.error(path, line, f"image URL is not absolute https: {image.src!r}")
    if not image.alt:
        out.error(path, line, f"image {image.src!r} has no alt text: write ![what it shows](...)")
    if not (image.width and image.height):
        out.error(path, line, f"image {image.src!r} needs a width and height for email clients: "
                  "add {width=W height=H} (pixels) right after it")
    for name in image.unknown:
        out.error(path, line, f"image {image.src!r} has unknown attribute {name!r} (only width and height)")


def _check_html_hrefs(html: str, line: int, path: Path, out: Any) -> None:
    for match in markup.RAW_IMG_RE.finditer(html):
        out.error(path, line + html.count("\n", 0, match.start()), "an image written as HTML is dropped: "
                  "write ![alt text](https://...){width=W height=H} instead")
    for match in HTML_HREF_RE.finditer(html):
        url = next(g for g in match.groups() if g is not None)
        _check_link(url, line + html.count("\n", 0, match.start()), path, out)
