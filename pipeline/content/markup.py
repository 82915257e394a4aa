"""Article Markdown to sanitised HTML and to plain text.

Citations are markers in the Markdown body: ``[^1]`` or ``[^1,2]`` (several
references cited at one place).  They become superscript links to the
numbered reference list, kept on one line with the word before them (a
``cite-group`` span styled ``white-space:nowrap``, and a no-break space inside
``[2, 4]``).  Every HTML fragment is passed through nh3, so a ``<script>``, an
event handler or a ``javascript:`` URL in an article never reaches an email, a
page or a feed.

Images are ``![alt](https://... "Caption"){width=600 height=400}``: the title
becomes the caption, the braces give the size email clients need.  An image
alone in its paragraph is a figure: ``<figure>``/``<figcaption>`` on pages and
in feeds, an image paragraph and a caption paragraph in email (``email=True``),
where it is also scaled down to the content column.
"""
from __future__ import annotations

import re
import threading
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from html import escape
from typing import Callable, Iterable

import nh3
from markdown_it import MarkdownIt
from markdown_it.token import Token

CITATION_RE = re.compile(r"\[\^(\d+(?:\s*,\s*\d+)*)\]")
# "{width=600 height=400}" right after an image
IMAGE_ATTRS_RE = re.compile(r"\{([^{}\n]*)\}")
IMAGE_ATTR_RE = re.compile(r"([A-Za-z-]+)\s*=\s*(\S+)")
# an <img> tag written as raw HTML: only Markdown images (checked for alt, https and size) become images
RAW_IMG_RE = re.compile(r"<\s*img(?=[\s/>])[^>]*>?", re.I)
EMAIL_IMAGE_WIDTH = 528  # the email's 600 px column less 36 px padding each side

ALLOWED_TAGS = {
    "p", "h2", "h3", "h4", "ul", "ol", "li", "strong", "em", "b", "i", "a", "sup", "sub",
    "blockquote", "code", "pre", "br", "hr", "table", "thead", "tbody", "tr", "th", "td", "span",
    "img", "figure", "figcaption",
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title", "aria-label", "class", "id"},
    "sup": {"class"},
    "span": {"class"},
    "p": {"class"},
    "img": {"src", "alt", "width", "height", "style"},
    "h2": {"id"},
    "h3": {"id"},
    "h4": {"id"},
    "th": {"scope"},
}
URL_SCHEMES = {"https", "http", "mailto"}
IMAGE_SCHEMES = {"https"}

CiteHref = Callable[[int], str]


@dataclass(frozen=True)
class Image:
    src: str
    alt: str
    title: str  # the caption; "" for none
    width: int | None
    height: int | None
    unknown: tuple[str, ...] = ()  # attribute names other than width/height, for check


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


def _positive(value: str) -> int | None:
    value = value.strip("\"'")
    return int(value) if value.isdigit() and 0 < int(value) <= 10000 else None


def _image_attrs_rule(state) -> None:
    """Move ``{width=.. height=..}`` after an image into the image token's meta, so no
    output (HTML or text) shows the braces."""
    for token in state.tokens:
        if token.type != "inline" or not token.children:
            continue
        children = token.children
        for i, child in enumerate(children):
            if child.type != "image":
                continue
            child.meta = dict(child.meta or {})
            following = children[i + 1] if i + 1 < len(children) else None
            match = IMAGE_ATTRS_RE.match(following.content) if following is not None and following.type == "text" else None
            if not match:
                continue
            attrs = dict(IMAGE_ATTR_RE.findall(match.group(1)))
            child.meta["width"] = _positive(attrs.pop("width", ""))
            child.meta["height"] = _positive(attrs.pop("height", ""))
            child.meta["unknown"] = tuple(attrs)
            following.content = following.content[match.end():]


@lru_cache(maxsize=1)
def parser() -> MarkdownIt:
    """The one Markdown parser: CommonMark with tables, plus citations and image sizes. Raw
    HTML is kept as text-to-sanitise (nh3 removes what is not allowed)."""
    md = MarkdownIt("commonmark", {"html": True, "linkify": False, "typographer": False}).enable("table")
    md.inline.ruler.before("link", "citation", _citation_rule)
    md.core.ruler.push("image_attrs", _image_attrs_rule)
    md.validateLink = _noting_refusals(md.validateLink)
    md.add_render_rule("citation", _render_citation)
    md.add_render_rule("heading_open", _render_heading_open)
    md.add_render_rule("image", _render_image)
    md.add_render_rule("paragraph_open", _render_paragraph_open)
    md.add_render_rule("paragraph_close", _render_paragraph_close)
    md.add_render_rule("html_inline", _render_raw_html)
    md.add_render_rule("html_block", _render_raw_html)
    return md


@lru_cache(maxsize=1)
def link_parser() -> MarkdownIt:
    """The same parser without markdown-it's link validation, which turns
    ``[x](javascript:...)`` into plain text: ``newsletter check`` must see every link
    an author wrote, whatever its scheme, to report it."""
    md = MarkdownIt("commonmark", {"html": True, "linkify": False, "typographer": False}).enable("table")
    md.inline.ruler.before("link", "citation", _citation_rule)
    md.core.ruler.push("image_attrs", _image_attrs_rule)
    md.validateLink = lambda url: True
    return md


# Whether the parse under way refused a link URL (``javascript:``...): the one way its tokens can
# differ from ``link_parser()``'s. Per thread: the web service parses in worker threads.
_refusals = threading.local()


def _noting_refusals(validate: Callable[[str], bool]) -> Callable[[str], bool]:
    def validate_link(url: str) -> bool:
        ok = validate(url)
        if not ok:
            _refusals.seen = True
        return ok
    return validate_link


class Tokens(list):
    """A parse's tokens; ``refused_links``: markdown-it refused a link URL while making them."""

    refused_links = True  # unknown: assume it did


def tokens(markdown: str) -> Tokens:
    _refusals.seen = False
    toks = Tokens(parser().parse(markdown))
    toks.refused_links = _refusals.seen
    return toks


def link_tokens(markdown: str, toks: list[Token] | None = None) -> list[Token]:
    """``link_parser()``'s tokens of ``markdown``: ``toks`` themselves when they come from ``tokens``
    and no link was refused (the two parsers differ in nothing else, so the parse would be the same)."""
    if isinstance(toks, Tokens) and not toks.refused_links:
        return toks
    return link_parser().parse(markdown)


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


def image_of(token: Token) -> Image:
    """The image an ``image`` token describes."""
    meta = token.meta or {}
    alt = "".join(c.content for c in token.children or ()) or token.content
    return Image(src=token.attrGet("src") or "", alt=" ".join(alt.split()), title=token.attrGet("title") or "",
                 width=meta.get("width"), height=meta.get("height"), unknown=meta.get("unknown", ()))


def images(markdown: str) -> list[Image]:
    """Every image of a body, in order; the first is the article's lead image."""
    return [image_of(child) for token in tokens(markdown) if token.type == "inline"
            for child in token.children or () if child.type == "image"]


def heading_id(text: str) -> str:
    """A readable fragment id: Unicode letters and digits kept (NFC, lower-cased),
    apostrophes dropped, every other run of characters a hyphen: "Café au lait" ->
    "café-au-lait", "微针" -> "微针", "What’s new – 2024 🎉" -> "whats-new-2024"."""
    text = unicodedata.normalize("NFC", text).lower()
    text = re.sub(r"['’‘`]", "", text)
    return re.sub(r"[\W_]+", "-", text).strip("-") or "section"


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold())


def opening(markdown: str, toks: list[Token] | None = None) -> str:
    """The text of the body's first paragraph (citations left out); ``toks``: the body already parsed."""
    toks = toks if toks is not None else tokens(markdown)
    for i, token in enumerate(toks):
        if token.type == "paragraph_open":
            return "".join(" " if c.type in ("softbreak", "hardbreak") else c.content
                           for c in toks[i + 1].children or () if c.type in ("text", "code_inline", "softbreak", "hardbreak"))
    return ""


def repeats_opening(summary: str, markdown: str, *, first_paragraph: str | None = None) -> bool:
    """True when the summary copies the body's first sentence(s), so showing it as a
    standfirst would say the opening twice. Compared word by word, ignoring case and
    punctuation; a summary's first sentence of fewer than four words never counts.
    ``first_paragraph``: ``opening(markdown)``, when a parse already gave it."""
    first = re.split(r"(?<=[.!?])\s+", " ".join(summary.split()), maxsplit=1)[0]
    words = _words(first)
    if len(words) < 4:
        return False
    return _words(opening(markdown) if first_paragraph is None else first_paragraph)[:len(words)] == words


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def cite_html(numbers: list[int], href: CiteHref, word: str = "") -> str:
    links = ",\u00a0".join(
        f'<a href="{escape(href(n))}" class="cite" aria-label="Reference {n}">{n}</a>' for n in numbers
    )
    marker = f'<sup class="cite">[{links}]</sup>'
    return f'<span class="cite-group">{escape(word, quote=False)}{marker}</span>' if word else marker


def _render_citation(self, tokens, idx, options, env) -> str:
    token = tokens[idx]
    return cite_html(token.meta["numbers"], env["cite_href"], token.meta.get("word", ""))


def _keep_markers_with_words(toks: list[Token]) -> None:
    """Move the word before each citation into the citation token, so the renderer
    wraps word and marker together and no line break falls between them."""
    for token in toks:
        if token.type != "inline" or not token.children:
            continue
        children = token.children
        for i, child in enumerate(children):
            if child.type != "citation" or i == 0 or children[i - 1].type != "text":
                continue
            before = children[i - 1]
            match = re.search(r"\S+\s*$", before.content)
            if match:
                child.meta = {**child.meta, "word": match.group()}
                before.content = before.content[:match.start()]


def _render_raw_html(self, tokens, idx, options, env) -> str:
    return RAW_IMG_RE.sub("", tokens[idx].content)


def _render_heading_open(self, tokens, idx, options, env) -> str:
    token = tokens[idx]
    if env.get("heading_ids") and idx + 1 < len(tokens):
        seen: set[str] = env.setdefault("ids_seen", set(env.get("reserved_ids", ())))
        base = heading_id(tokens[idx + 1].content)
        unique, n = base, 1
        while unique in seen:
            n += 1
            unique = f"{base}-{n}"
        seen.add(unique)
        return f'<{token.tag} id="{escape(unique)}">'
    return f"<{token.tag}>"


def _lone_image(tokens, idx: int) -> Token | None:
    """The image token when the paragraph opening at ``idx`` holds only an image."""
    if tokens[idx].hidden or idx + 1 >= len(tokens):
        return None
    children = [c for c in tokens[idx + 1].children or () if not (c.type == "text" and not c.content.strip())]
    return children[0] if len(children) == 1 and children[0].type == "image" else None


def image_size(image: Image, email: bool) -> tuple[int | None, int | None]:
    """The width and height attributes: as written, or scaled down to the email column."""
    width, height = image.width, image.height
    if email and width and height and width > EMAIL_IMAGE_WIDTH:
        return EMAIL_IMAGE_WIDTH, max(1, round(height * EMAIL_IMAGE_WIDTH / width))
    return width, height


# the only inline styles an image may carry (our renderer writes them; raw HTML images never
# reach the sanitiser): an email figure fills the column up to its own width, any other
# email image shrinks to fit. Percentages need the inline style: an <img> in a table cell
# with only max-width would widen the cell on a phone.
EMAIL_IMAGE_STYLE = re.compile(r"(display:block;width:100%;max-width:\d+px;|max-width:100%;)height:auto;border:0")


def _render_image(self, tokens, idx, options, env) -> str:
    image = image_of(tokens[idx])
    if not image.src.lower().startswith("https://"):
        return escape(image.alt)  # check refuses it; never an <img> without a source
    email = env.get("email", False)
    width, height = image_size(image, email)
    size = (f' width="{width}"' if width else "") + (f' height="{height}"' if height else "")
    style = ""
    if email:
        fill = f"display:block;width:100%;max-width:{width}px;" if env.get("in_figure") and width else "max-width:100%;"
        style = f' style="{fill}height:auto;border:0"'
    return f'<img src="{escape(image.src)}" alt="{escape(image.alt)}"{size}{style}>'


def _render_paragraph_open(self, tokens, idx, options, env) -> str:
    env["in_figure"] = _lone_image(tokens, idx) is not None
    if env["in_figure"]:
        return '<p class="figure">' if env.get("email") else "<figure>"
    return self.renderToken(tokens, idx, options, env)


def _render_paragraph_close(self, tokens, idx, options, env) -> str:
    opening = idx - 2
    image = _lone_image(tokens, opening) if opening >= 0 and tokens[opening].type == "paragraph_open" else None
    env["in_figure"] = False
    if image is None:
        return self.renderToken(tokens, idx, options, env)
    caption = escape(image_of(image).title)
    if env.get("email"):
        return "</p>\n" + (f'<p class="caption">{caption}</p>\n' if caption else "")
    return (f"<figcaption>{caption}</figcaption>" if caption else "") + "</figure>\n"


def to_html(markdown: str, cite_href: CiteHref, heading_ids: bool = False, *, email: bool = False,
            reserved_ids: Iterable[str] = ()) -> str:
    """Render an article body to sanitised HTML. ``cite_href(n)`` gives each citation's link;
    ``email`` makes figures email-safe; ``reserved_ids`` are ids the page already uses."""
    return render_body(markdown, cite_href, heading_ids, email=email, reserved_ids=reserved_ids).html


@dataclass(frozen=True)
class RenderedBody:
    """What one parse of a body gives: its HTML, its opening (``opening``) and its images (``images``)."""

    html: str
    opening: str
    images: tuple[Image, ...]


def render_body(markdown: str, cite_href: CiteHref, heading_ids: bool = False, *, email: bool = False,
                reserved_ids: Iterable[str] = ()) -> RenderedBody:
    """``to_html``, with the opening and the images read from the same parse (parsing is most of
    the cost of a page)."""
    md = parser()
    env = {"cite_href": cite_href, "heading_ids": heading_ids, "email": email, "reserved_ids": tuple(reserved_ids)}
    toks = md.parse(markdown, env)
    first = opening(markdown, toks)  # before the words move into the citations
    found = tuple(image_of(child) for token in toks if token.type == "inline"
                  for child in token.children or () if child.type == "image")
    _keep_markers_with_words(toks)
    return RenderedBody(sanitize(md.renderer.render(toks, md.options, env)), first, found)


def sanitize(html: str) -> str:
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel=None,
        strip_comments=True,
        attribute_filter=_filter_attribute,
    )


def _filter_attribute(tag: str, attribute: str, value: str) -> str | None:
    # an image is fetched by the reader's client: https only, never http or data:
    if tag == "img" and attribute == "src" and not value.lower().startswith("https://"):
        return None
    if tag == "img" and attribute == "style" and not EMAIL_IMAGE_STYLE.fullmatch(value):
        return None
    return value
