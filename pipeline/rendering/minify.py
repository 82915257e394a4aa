"""The email's HTML made small after inlining, without changing what any client shows.

``pipeline.rendering.styles.finish`` calls ``compact`` last.  Each step takes out bytes
that render as nothing (or, the last, bytes of the encoding):

- ``minify_html``: whitespace runs become one space (or one newline), style attributes
  and ``<style>`` blocks lose their spaces and comments, ``margin:0 0 18px 0`` becomes
  ``margin:0 0 18px``; ``<pre>`` and ``<title>`` are left alone.
- ``drop_unused_classes``: once premailer has inlined ``inline.css``, a class that no
  ``<style>`` block left in the message names (``cite``, ``cite-group``, ``refs``...) only
  served the inliner.  Classes a kept block uses (``px``, ``card``, dark mode's) stay.
- ``drop_redundant``: MJML's markup that no client we target reads differently without it:
  ``<tbody>`` (every parser adds it), the XHTML ``xmlns`` (HTML parsers ignore it) and the
  ``<!--[if lte mso 11]>`` block (Outlook 2003 and older); and MJML writes Outlook's tables
  as runs of conditional comments, where ``<![endif]--><!--[if mso | IE]>`` says nothing.
- ``fit_lines`` (for the MIME encoder, so the rendered HTML, its golden copy and its web page
  keep their lines): the message carries the HTML as quoted-printable, whose lines are at
  most 76 characters; a longer line costs a soft break (``=`` CRLF, 3 bytes) every 75.
  A space where HTML allows any whitespace (between words of text, between attributes;
  ``<style>`` blocks are left as they are) becomes a line break instead, so most lines
  need no soft break (1 byte instead of 3).
"""
from __future__ import annotations

import re
import unicodedata

QP_LINE = 76  # RFC 2045: an encoded line is at most 76 characters


def compact(html: str) -> str:
    """The steps above but the last, which ``pipeline.delivery.message`` takes when it
    encodes the HTML part."""
    return drop_unused_classes(drop_redundant(minify_html(html)))


# -- CSS and whitespace -----------------------------------------------------------------

_CSS_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_CSS_SPACE = re.compile(r"\s*([{};,>])\s*")


def minify_css(css: str) -> str:
    """Comments out, whitespace collapsed and dropped around ``{ } ; , >``. Spaces that
    separate words (``only screen and``, ``0 0 18px 0``, ``!important``) stay."""
    css = " ".join(_CSS_COMMENT.sub(" ", css).split())
    css = _CSS_SPACE.sub(r"\1", css).replace(": ", ":").replace(";}", "}")
    return shorter_values(_BOX.sub(_shorter_box, css))


def _shorter_box(match: re.Match) -> str:
    """``margin:0 0 18px 0`` as ``margin:0 0 18px``: the same four sides, fewer bytes."""
    top, right, bottom, left = match.group(2).split()
    sides = [top, right, bottom, left]
    if left == right:
        sides.pop()
        if bottom == top:
            sides.pop()
            if right == top:
                sides.pop()
    return f"{match.group(1)}:{' '.join(sides)}"


_BOX = re.compile(r"(?<![\w-])(margin|padding):((?:-?[\d.]+(?:px|em|%)?\s+){3}-?[\d.]+(?:px|em|%)?)(?=[;}]|$)")


_ZERO_PX = re.compile(r"(?<![\w.#-])0px\b")
_HEX6 = re.compile(r"#([0-9a-fA-F])\1([0-9a-fA-F])\2([0-9a-fA-F])\3\b")


def shorter_values(css: str) -> str:
    """``0px`` as ``0`` and ``#ffffff`` as ``#fff``: the same values, fewer bytes."""
    return _HEX6.sub(r"#\1\2\3", _ZERO_PX.sub("0", css))


def _compact_style(match: re.Match) -> str:
    value = re.sub(r"\s*;\s*", ";", match.group(2)).strip().rstrip(";")
    value = re.sub(r"\s*:\s*", ":", value)
    value = re.sub(r",\s+", ",", value)
    value = shorter_values(_BOX.sub(_shorter_box, value))
    return f'{match.group(1)}"{value}"'


# one token: a <pre>, <title> or <style> element, a comment, a tag, or text between them
_TOKENS = re.compile(r"(<pre\b.*?</pre>|<title\b.*?</title>|<style\b[^>]*>.*?</style>|<!--.*?-->|<[^>]+>)",
                     re.S | re.I)
_STYLE_ATTR = re.compile(r'(\sstyle=)"([^"]*)"')


def minify_html(html: str) -> str:
    """Whitespace runs become one space (a newline when they held one), style attributes
    lose their spaces, ``<style>`` blocks are minified.  Nothing that renders changes: a run
    of whitespace renders as one space wherever it does at all, and ``<pre>`` and ``<title>``
    are left alone."""
    out = []
    for i, piece in enumerate(_TOKENS.split(html)):
        if not piece:
            continue
        if i % 2 == 0:  # text
            out.append(re.sub(r"\s+", lambda m: "\n" if "\n" in m.group() else " ", piece))
        elif piece[:6].lower() == "<style":
            head, _, rest = piece.partition(">")
            css, _, _ = rest.rpartition("</")
            out.append(f"{head}>{minify_css(css)}</style>")
        elif piece.startswith("<!--") or piece[:4].lower() == "<pre" or piece[:6].lower() == "<title":
            out.append(piece)
        else:
            out.append(_STYLE_ATTR.sub(_compact_style, piece))
    return "".join(out)


# -- classes and conditional comments ----------------------------------------------------

_STYLE_BLOCK = re.compile(r"<style\b[^>]*>(.*?)</style>", re.S | re.I)
_CLASS_SELECTOR = re.compile(r"\.(-?[A-Za-z_][\w-]*)")
_CLASS_ATTR = re.compile(r'\sclass="([^"]*)"')


def used_classes(html: str) -> set[str]:
    """The class names the message's ``<style>`` blocks select on (those inside Outlook's
    conditional comments included)."""
    names: set[str] = set()
    for css in _STYLE_BLOCK.findall(html):
        names.update(_CLASS_SELECTOR.findall(_CSS_COMMENT.sub(" ", css)))
    return names


def drop_unused_classes(html: str) -> str:
    """Class names that no ``<style>`` block uses taken out of every class attribute (the
    attribute too when none is left)."""
    used = used_classes(html)

    def keep(match: re.Match) -> str:
        names = [name for name in match.group(1).split() if name in used]
        return f' class="{" ".join(names)}"' if names else ""
    return _CLASS_ATTR.sub(keep, html)


_SPLIT_CONDITIONAL = re.compile(r"<!\[endif\]--><!--\[if mso \| IE\]>")
_OLD_OUTLOOK = re.compile(r"<!--\[if lte mso 11\]>.*?<!\[endif\]-->", re.S)


def drop_redundant(html: str) -> str:
    """MJML's ``<tbody>`` tags, the XHTML namespace and the block for Outlook 2003 and older
    taken out, and neighbouring ``<!--[if mso | IE]>`` comments merged into one."""
    html = html.replace("<tbody>", "").replace("</tbody>", "")
    html = html.replace(' xmlns="http://www.w3.org/1999/xhtml"', "", 1)
    html = _OLD_OUTLOOK.sub("", html)
    return _SPLIT_CONDITIONAL.sub("", html)


# -- lines for quoted-printable ---------------------------------------------------------

_ESCAPED = re.compile(r"[^ -<>-~]")  # what quoted-printable writes as =XX: "=", controls, non-ASCII
_TAG_SPACE = re.compile(r"\"[^\"]*\"|'[^']*'|( )")  # a space in a tag, outside quoted values


def qp_length(text: str, line_start: bool = False) -> int:
    """How many characters ``text`` (one line) takes in quoted-printable: ``=`` and every byte
    of a control or non-ASCII character is ``=XX``; a line-initial ``.`` is written ``=2E``
    (``pipeline.delivery.message``), so a line never needs SMTP dot-stuffing."""
    n = len(text) + sum(3 * len(c.encode("utf-8")) - 1 for c in _ESCAPED.findall(text))
    return n + 2 if line_start and text.startswith(".") else n


def _wide(char: str) -> bool:
    # between two East Asian wide characters a line break may render as nothing, not a space
    return char > "\u2e7f" and unicodedata.east_asian_width(char) in ("W", "F")


def _breakable_spaces(html: str) -> list[int]:
    """Positions of spaces that may become line breaks without changing the rendering: in
    text (not between two wide characters) and between a tag's attributes.  Never in
    ``<pre>``, ``<title>``, ``<style>``, comments or attribute values."""
    spots: list[int] = []
    position = 0
    for i, piece in enumerate(_TOKENS.split(html)):
        if i % 2 == 0:  # text
            j = piece.find(" ")
            while j != -1:
                at = position + j
                if not (0 < at < len(html) - 1 and _wide(html[at - 1]) and _wide(html[at + 1])):
                    spots.append(at)
                j = piece.find(" ", j + 1)
        elif not piece.startswith("<!--") and piece[:4].lower() != "<pre" and piece[:6].lower() not in ("<title", "<style"):
            spots.extend(position + m.start(1) for m in _TAG_SPACE.finditer(piece) if m.group(1))
        position += len(piece)
    return spots


def fit_lines(html: str, width: int = QP_LINE) -> str:
    """``html`` with spaces turned into line breaks (greedily, as late as possible) so that
    its lines fit in ``width`` quoted-printable characters where a breakable space allows.
    A line without one stays long, and the encoder soft-breaks it as before.  Placeholders
    (``pipeline.rendering.issue.PLACEHOLDERS``) hold no space, so they are never cut."""
    spots = _breakable_spaces(html)
    if not spots:
        return html
    out: list[str] = []
    start, column = 0, 0
    for spot in [*spots, len(html)]:
        word = html[start:spot]  # the text up to the next breakable space (hard breaks included)
        first, newline, _ = word.partition("\n")
        if start and column + 1 + qp_length(first) > width:
            out.append("\n")
            column = 0
        elif start:
            out.append(" ")
            column += 1
        out.append(word)
        last = word.rpartition("\n")[2]
        column = qp_length(last, line_start=True) if newline else column + qp_length(first, column == 0)
        start = spot + 1
    return "".join(out)
