"""Article Markdown to sanitised HTML and to plain text.

Citations are markers in the Markdown body: ``[^1]`` or ``[^1,2]`` (several
references cited at one place).  They become superscript links to the
numbered reference list.  Every HTML fragment is passed through nh3, so a
``<script>``, an event handler or a ``javascript:`` URL in an article never
reaches an email, a page or a feed.
"""
from __future__ import annotations

import re
from functools import lru_cache
from html import escape
from typing import Callable, Iterable

import nh3
from markdown_it import MarkdownIt
from markdown_it.token import Token

CITATION_RE = re.compile(r"\[\^(\d+(?:\s*,\s*\d+)*)\]")

ALLOWED_TAGS = {
    "p", "h2", "h3", "h4", "ul", "ol", "li", "strong", "em", "b", "i", "a", "sup", "sub",
    "blockquote", "code", "pre", "br", "hr", "table", "thead", "tbody", "tr", "th", "td", "span",
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title", "aria-label", "class", "id"},
    "sup": {"class"},
    "span": {"class"},
    "h2": {"id"},
    "h3": {"id"},
    "h4": {"id"},
    "th": {"scope"},
}
URL_SCHEMES = {"https", "http", "mailto"}

CiteHref = Callable[[int], str]


def citation_numbers(marker_body: str) -> list[int]:
    return [int(n) for n in marker_body.split(",")]


def _citation_rule(state, silent: bool) -> bool:
    if not state.src.startswith("[^", state.pos):
        return False
    match = CITATION_RE.match(state.src, state.pos)
    if not match:
        return False
    if not silent:
        token = state.push("citation", "sup", 0)
        token.meta = {"numbers": citation_numbers(match.group(1))}
    state.pos = match.end()
    return True


@lru_cache(maxsize=1)
def parser() -> MarkdownIt:
    """The one Markdown parser: CommonMark with tables, plus citations. Raw HTML is kept
    as text-to-sanitise (nh3 removes what is not allowed)."""
    md = MarkdownIt("commonmark", {"html": True, "linkify": False, "typographer": False}).enable("table")
    md.inline.ruler.before("link", "citation", _citation_rule)
    md.add_render_rule("citation", _render_citation)
    md.add_render_rule("heading_open", _render_heading_open)
    return md


def tokens(markdown: str) -> list[Token]:
    return parser().parse(markdown)


def citations(markdown: str) -> Iterable[tuple[int, int]]:
    """Yield (line offset within the body, 0-based; reference number) for every citation."""
    for token in tokens(markdown):
        if token.type != "inline" or not token.children:
            continue
        line = token.map[0] if token.map else 0
        for child in token.children:
            if child.type == "citation":
                for number in child.meta["numbers"]:
                    yield line, number


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def cite_html(numbers: list[int], href: CiteHref) -> str:
    links = ", ".join(
        f'<a href="{escape(href(n))}" class="cite" aria-label="Reference {n}">{n}</a>' for n in numbers
    )
    return f'<sup class="cite">[{links}]</sup>'


def _render_citation(self, tokens, idx, options, env) -> str:
    return cite_html(tokens[idx].meta["numbers"], env["cite_href"])


def _render_heading_open(self, tokens, idx, options, env) -> str:
    token = tokens[idx]
    if env.get("heading_ids") and idx + 1 < len(tokens):
        return f'<{token.tag} id="{slugify(tokens[idx + 1].content)}">'
    return f"<{token.tag}>"


def to_html(markdown: str, cite_href: CiteHref, heading_ids: bool = False) -> str:
    """Render an article body to sanitised HTML. ``cite_href(n)`` gives each citation's link."""
    md = parser()
    return sanitize(md.render(markdown, {"cite_href": cite_href, "heading_ids": heading_ids}))


def sanitize(html: str) -> str:
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel=None,
        strip_comments=True,
    )
