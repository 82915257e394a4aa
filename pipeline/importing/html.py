"""The HTML reader (``read_html``): ``h1``/``h2``/``h3``, ``ul``/``li``, ``<sup>`` citation numbers and an
``ol`` reference list, read into the same ``Page`` as the text reader."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.content.article import Reference
from pipeline.content.library import is_absolute_http_url as _is_http_url
from pipeline.errors import ImportError_
from pipeline.importing.page import (Block, BulletList, Cite, Heading, Link, Page, Paragraph, REFERENCES_RE, tidy,
                                     parse_numbers, parse_reference, plain)
from pipeline.importing.trailer import Line, read_trailer


# -- the HTML reader --------------------------------------------------------------

DROP_TAGS = {"script", "style", "noscript", "template", "form", "nav", "button", "input", "select", "textarea",
             "label", "iframe", "svg", "canvas", "object", "embed", "head", "img", "picture", "video", "audio"}
HEADING_TAGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
TEXT_TAGS = {"p", "li", "dt", "dd", "figcaption", "caption", "td", "th", "pre"} | HEADING_TAGS
CONTAINER_TAGS = {"html", "body", "main", "article", "section", "aside", "header", "footer", "div", "ul", "ol",
                  "dl", "address", "blockquote", "figure", "table", "thead", "tbody", "tr"}


@dataclass
class _HtmlBlock:
    kind: str  # "h1".."h6", "p", "ul", "ol" (a list item)
    parts: list  # inline parts: str, Cite, Link
    line: int
    group: int
    href: str | None = None  # last absolute link in the block (reference lists)


def read_html(path: Path, text: str) -> Page:
    """Read an HTML page: the first ``h1`` is the title; ``h2`` are sections, ``h3``
    and deeper subsections; ``ul``/``li`` bullet lists; a ``<sup>`` holding numbers of
    existing references is a citation; the ``ol`` after a "References" heading is the
    reference list.  Forms, scripts, navigation and anything before the ``h1`` are
    dropped.  A ``<br>`` splits a block into lines."""
    import lxml.html

    text = re.sub(r"^\s*<\?xml[^>]*\?>", "", text)  # lxml refuses str input with an encoding declaration
    parser = lxml.html.HTMLParser(remove_comments=True, remove_pis=True, no_network=True)
    try:
        root = lxml.html.document_fromstring(text, parser=parser)
    except Exception as exc:  # lxml raises ParserError or ValueError on empty or broken documents
        raise ImportError_(f"cannot parse the HTML page: {exc}", path=path, line=1) from None
    blocks: list[_HtmlBlock] = []
    _walk(root, 0, blocks, [0])

    title_at = next((i for i, b in enumerate(blocks) if b.kind == "h1"), None)
    if title_at is None:
        raise ImportError_("no title: the page has no <h1>", path=path, line=1)
    title = plain(tidy(blocks[title_at].parts))
    if not title:
        raise ImportError_("no title: the <h1> is empty", path=path, line=blocks[title_at].line)
    ref_at = next((i for i in range(title_at + 1, len(blocks)) if blocks[i].kind in HEADING_TAGS
                   and REFERENCES_RE.match(plain(tidy(blocks[i].parts)))), None)
    if ref_at is None:
        raise ImportError_("no References section (a 'References' heading followed by an <ol>)",
                           path=path, line=text.count("\n") + 1)
    references: list[Reference] = []
    i = ref_at + 1
    while i < len(blocks) and blocks[i].kind == "ol":
        raw = "".join(p if isinstance(p, str) else p.text for p in blocks[i].parts)
        references.append(parse_reference(len(references) + 1, raw, path, blocks[i].line, blocks[i].href))
        i += 1
    if not references:
        raise ImportError_("the References section has no <ol> list items", path=path, line=blocks[ref_at].line)
    count = len(references)

    notes: list[str] = []
    body: list[Block] = []
    list_group = None  # the <ul> the last bullet came from: its next <li> joins the same list
    for block in blocks[title_at + 1:ref_at]:
        parts = tidy(_resolve_cites(block.parts, count, notes, path, block.line))
        if not parts:
            continue
        if block.kind in HEADING_TAGS:
            body.append(Heading(2 if block.kind in ("h1", "h2") else 3, parts, block.line))
        elif block.kind in ("ul", "ol"):
            if block.kind == "ol":
                notes.append(f"{path}:{block.line}: a numbered list in the body becomes a bullet list")
            if body and isinstance(body[-1], BulletList) and list_group == block.group:
                body[-1] = BulletList(body[-1].items + (parts,), body[-1].line)
            else:
                body.append(BulletList((parts,), block.line))
            list_group = block.group
            continue
        else:
            body.append(Paragraph(parts, block.line))
        list_group = None

    trailer = [Line(plain(tidy(b.parts)), b.line, b.group) for b in blocks[i:]]
    trailer = [t for t in trailer if t.text]
    author, site, trailer_notes = read_trailer(trailer, path, text.count("\n") + 1)
    return Page(path, title, tuple(body), tuple(references), author, site, tuple(notes + trailer_notes))


@dataclass(frozen=True)
class _Sup:
    """A ``<sup>`` holding numbers: a citation once the reference count is known."""
    text: str


def _resolve_cites(parts: list, count: int, notes: list[str], path: Path, line: int) -> list:
    out = []
    for part in parts:
        if isinstance(part, _Sup):
            numbers = parse_numbers(part.text.strip("[]() "), count)
            if numbers is None:
                notes.append(f"{path}:{line}: <sup>{part.text}</sup> is not a citation of an existing "
                             f"reference (there are {count}); kept as text")
                out.append(part.text)
            else:
                out.append(Cite(numbers))
        else:
            out.append(part)
    return out


GROUP_TAGS = {"article", "section", "aside", "footer", "header", "main", "body", "div", "address", "blockquote",
              "figure", "ul", "ol"}


def _walk(el, group: int, out: list[_HtmlBlock], counter: list[int]) -> None:
    """Emit the text blocks under ``el`` in document order.  ``group`` numbers the
    enclosing grouping element (counted, not ``id()``: lxml's proxies are transient)."""
    tag = el.tag.lower() if isinstance(el.tag, str) else ""
    if tag in DROP_TAGS or not tag:
        return
    if tag in TEXT_TAGS:
        kind = tag
        if tag == "li":
            parent = el.getparent()
            kind = "ol" if parent is not None and parent.tag == "ol" else "ul"
        for parts in _inline_lines(el):
            out.append(_HtmlBlock(kind, parts, el.sourceline or 1, group, _last_href(el)))
        return
    if tag in GROUP_TAGS:
        counter[0] += 1
        group = counter[0]
    if not any(isinstance(c.tag, str) and c.tag.lower() in TEXT_TAGS | CONTAINER_TAGS for c in el.iter()
               if c is not el):
        for parts in _inline_lines(el):  # a leaf container: <div>Email:</div>
            out.append(_HtmlBlock("p", parts, el.sourceline or 1, group))
        return
    if el.text and el.text.strip():
        out.append(_HtmlBlock("p", [el.text], el.sourceline or 1, group))
    for child in el:
        _walk(child, group, out, counter)
        if child.tail and child.tail.strip():
            out.append(_HtmlBlock("p", [child.tail], el.sourceline or 1, group))


def _inline_lines(el) -> list[list]:
    """The element's inline content as lines (split at ``<br>``) of parts."""
    lines: list[list] = [[]]

    def visit(node) -> None:
        if node.text:
            lines[-1].append(node.text)
        for child in node:
            tag = child.tag.lower() if isinstance(child.tag, str) else ""
            if tag == "br":
                lines.append([])
            elif tag == "sup" and re.fullmatch(r"\s*\[?[\d,\u2013\- ]+\]?\s*", child.text_content() or ""):
                lines[-1].append(_Sup(" ".join(child.text_content().split()).replace(" ", "")))
            elif tag == "a" and _is_http_url(child.get("href") or "") and child.text_content().strip():
                lines[-1].append(Link(" ".join(child.text_content().split()), child.get("href")))
            elif tag and tag not in DROP_TAGS:
                visit(child)
            if child.tail:
                lines[-1].append(child.tail)

    visit(el)
    return [parts for parts in lines if any(isinstance(p, (_Sup, Link)) or str(p).strip() for p in parts)]


def _last_href(el) -> str | None:
    hrefs = [a.get("href") for a in el.iter("a") if _is_http_url(a.get("href") or "")]
    return hrefs[-1] if hrefs else None
