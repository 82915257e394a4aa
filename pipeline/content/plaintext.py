"""Article Markdown to plain text for the email's text/plain part.

A walker over ``pipeline.content.markup.tokens``: headings are underlined, paragraphs
and list items are wrapped at 78 characters (a URL is never broken, so a line
holding one may be longer), citations stay as ``[1,2]`` markers pointing to
the numbered references, and links become ``<n>`` footnotes collected by a
``Footnotes`` object that the text template lists at the end.  Raw HTML in
an article never reaches the text: tags are dropped and ``<script>``/``<style>``
content with them.
"""
from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from html import unescape
from urllib.parse import urlsplit

import nh3

from pipeline.content import markup

WIDTH = 78
LINK_SCHEMES = ("https", "http", "mailto")  # the schemes nh3 lets through in the HTML part
UNDERLINES = {1: "=", 2: "-", 3: "~"}
_HIDDEN_CONTENT = re.compile(r"<\s*(script|style)\b", re.I)
_HIDDEN_END = re.compile(r"<\s*/\s*(script|style)\s*>", re.I)
_RAW_LINK_OPEN = re.compile(r"<a\b[^>]*?\shref\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s>]+))", re.I)
_RAW_LINK_CLOSE = re.compile(r"<\s*/\s*a\s*>", re.I)


class Footnotes:
    """Numbered link footnotes in order of first appearance, marked ``<n>``.

    Citations are ``[n]`` and links ``<n>``, so a marker says which list it points
    to (the references or the "Links" list) without counting. ``first`` is the first
    number (1 unless a caller continues another list).
    """

    def __init__(self, first: int = 1):
        self.first = first
        self._numbers: dict[str, int] = {}

    def mark(self, url: str) -> str:
        number = self._numbers.setdefault(url, self.first + len(self._numbers))
        return f"<{number}>"

    def items(self) -> list[tuple[int, str]]:
        return [(n, url) for url, n in self._numbers.items()]


def plain(value: object) -> str:
    """A content value as plain text: any HTML tags (and script/style content) removed."""
    text = str(value)
    if "<" not in text and "&" not in text:
        return text
    return unescape(nh3.clean(text, tags=set()))


def wrap(text: str, width: int = WIDTH, indent: str = "", subsequent: str | None = None) -> str:
    """Wrap each line of ``text``; words (and so URLs) are never broken."""
    subsequent = indent if subsequent is None else subsequent
    lines: list[str] = []
    for i, piece in enumerate(text.split("\n")):
        first = indent if i == 0 else subsequent
        filled = textwrap.fill(piece, width, initial_indent=first, subsequent_indent=subsequent,
                               break_long_words=False, break_on_hyphens=False)
        lines.append(filled if filled.strip() else first.rstrip())
    return "\n".join(lines)


def underline(text: str, level: int = 2, width: int = WIDTH) -> str:
    text = " ".join(text.split())
    char = UNDERLINES.get(level)
    if char is None:
        return wrap(text, width)
    wrapped = wrap(text, width)
    longest = max(len(line) for line in wrapped.splitlines())
    return f"{wrapped}\n{char * min(longest, width)}"


@dataclass
class _Item:
    marker: str
    used: bool = False


class _Quote:
    pass


@dataclass
class _Block:
    text: str
    tight: bool = False  # an item of a tight list: no blank line before it when the previous one is tight too


def body_text(markdown: str, footnotes: Footnotes, width: int = WIDTH) -> str:
    """The article body as wrapped plain text, links footnoted in ``footnotes``."""
    toks = markup.tokens(markdown)
    blocks: list[_Block] = []
    stack: list[_Item | _Quote] = []
    lists: list[dict] = []
    table: list[list[str]] | None = None
    row: list[str] = []
    hidden_paragraph = False

    def prefixes() -> tuple[str, str]:
        first = rest = ""
        for container in stack:
            if isinstance(container, _Quote):
                first, rest = first + "> ", rest + "> "
            else:
                pad = " " * len(container.marker)
                first += pad if container.used else container.marker
                rest += pad
        for container in stack:
            if isinstance(container, _Item):
                container.used = True
        return first, rest

    for i, tok in enumerate(toks):
        kind = tok.type
        if kind in ("bullet_list_open", "ordered_list_open"):
            lists.append({"ordered": kind == "ordered_list_open", "n": int(tok.attrGet("start") or 1) - 1})
        elif kind in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
        elif kind == "list_item_open":
            current = lists[-1]
            current["n"] += 1
            stack.append(_Item(f"{current['n']}. " if current["ordered"] else "- "))
        elif kind == "blockquote_open":
            stack.append(_Quote())
        elif kind in ("list_item_close", "blockquote_close"):
            stack.pop()
        elif kind == "paragraph_open":
            hidden_paragraph = tok.hidden
        elif kind == "heading_open":
            level = int(tok.tag[1])
            blocks.append(_Block(underline(_inline(toks[i + 1], footnotes), level, width)))
        elif kind == "inline":
            parent = toks[i - 1].type
            if parent == "paragraph_open":
                first, rest = prefixes()
                blocks.append(_Block(wrap(_inline(tok, footnotes), width, first, rest), tight=hidden_paragraph))
            elif parent in ("th_open", "td_open"):
                row.append(_inline(tok, footnotes))
        elif kind in ("fence", "code_block"):
            first, rest = prefixes()
            lines = tok.content.rstrip("\n").split("\n")
            blocks.append(_Block("\n".join((first if n == 0 else rest) + "    " + line for n, line in enumerate(lines))))
        elif kind == "hr":
            blocks.append(_Block("* * *"))
        elif kind == "html_block":
            text = " ".join(plain(tok.content).split())
            if text:
                first, rest = prefixes()
                blocks.append(_Block(wrap(text, width, first, rest)))
        elif kind == "table_open":
            table = []
        elif kind == "tr_open":
            row = []
        elif kind == "tr_close" and table is not None:
            table.append(row)
        elif kind == "table_close" and table is not None:
            blocks.append(_Block("\n".join(wrap(" | ".join(cells), width) for cells in table)))
            table = None

    out: list[str] = []
    previous: _Block | None = None
    for block in blocks:
        if out:
            out.append("\n" if block.tight and previous is not None and previous.tight else "\n\n")
        out.append(block.text)
        previous = block
    return "".join(out)


def _inline(tok, footnotes: Footnotes) -> str:
    parts: list[str] = []
    links: list[tuple[str | None, int]] = []  # (href, index in parts where the link text starts)
    hiding = False
    for child in tok.children or ():
        kind = child.type
        if kind == "html_inline":
            # tags never reach the text; what a script or style holds is not text either.
            # A raw <a href> is a link in the HTML part (nh3 keeps it), so it gets a footnote here too.
            if _HIDDEN_CONTENT.match(child.content):
                hiding = True
            elif _HIDDEN_END.match(child.content):
                hiding = False
            elif not hiding and (raw := _RAW_LINK_OPEN.match(child.content)):
                links.append((unescape(next(g for g in raw.groups() if g is not None)), len(parts)))
            elif not hiding and _RAW_LINK_CLOSE.match(child.content):
                kind = "link_close"
            if kind == "html_inline":
                continue
        if hiding:
            continue
        if kind in ("text", "code_inline"):
            parts.append(child.content)
        elif kind == "softbreak":
            parts.append(" ")
        elif kind == "hardbreak":
            parts.append("\n")
        elif kind == "citation":
            parts.append("[" + ",".join(str(n) for n in child.meta["numbers"]) + "]")
        elif kind == "image":
            alt = child.content or "".join(c.content for c in child.children or ())
            if alt:
                parts.append(alt)
        elif kind == "link_open":
            links.append((child.attrGet("href"), len(parts)))
        elif kind == "link_close" and links:
            href, start = links.pop()
            label = "".join(parts[start:]).strip()
            if href and urlsplit(href).scheme in LINK_SCHEMES and label != href:
                parts.append(" " + footnotes.mark(href))
    return "".join(parts).strip()
