"""The email's CSS, and its HTML made small after inlining.

Two stylesheets in ``templates/email/``:

- ``inline.css`` is inlined onto each element by premailer, so clients that drop
  ``<style>`` blocks (Gmail for non-Google accounts, some webmail) still show it.
  It is not repeated in a ``<style>`` block: every client that reads one also
  reads the inline styles.
- ``head.css`` stays one ``<style>`` block in ``<head>``: what an inline style
  cannot say (the phone ``@media`` rules, dark mode, Outlook.com's
  ``[data-ogsc]``/``[data-ogsb]`` rules) and the citation tap targets, whose
  absence leaves a correct email.

MJML's own reset blocks stay in ``<head>`` as MJML means them, instead of being
copied onto every table and cell.  Then ``compact`` takes out what changes no
rendering: spaces inside style attributes, whitespace runs (``<pre>`` is kept),
CSS comments and layout attributes premailer copies onto inline elements.

``finish(html, compact=False)`` builds the email the earlier way (every rule
inlined, every block kept, nothing minified): tests render both in Chromium and
compare the screenshots, so "smaller" is shown to mean "looks the same".
"""
from __future__ import annotations

import logging
import re
from functools import lru_cache
from pathlib import Path

from premailer import Premailer

TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "email"
DOCTYPE = "<!DOCTYPE html>"
COLOR_SCHEME_META = ('<meta name="color-scheme" content="light dark">'
                     '<meta name="supported-color-schemes" content="light dark">')
# elements whose presentational attributes (align, valign, bgcolor, width) Outlook reads
_ATTRIBUTE_TAGS = frozenset({"table", "tr", "td", "th", "body"})


@lru_cache(maxsize=4)
def stylesheet(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


class _Inliner(Premailer):
    compact = True

    def _style_to_basic_html_attributes(self, element, style_content, force=False):
        # premailer copies CSS width/height into attributes; an image's attributes are its size
        # in pixels for Outlook, while its "width:100%; height:auto" only scales it on phones.
        # Compact output also leaves inline elements alone (align on an <a>, valign on a <sup> do nothing).
        if element.tag == "img" or (self.compact and element.tag not in _ATTRIBUTE_TAGS):
            return
        super()._style_to_basic_html_attributes(element, style_content, force)


def _head_block(css: str) -> str:
    return f"{COLOR_SCHEME_META}<style type=\"text/css\">{css}</style>"


def finish(html: str, *, compact: bool = True) -> str:
    """The compiled MJML with its CSS inlined, the head styles and colour-scheme meta added,
    and (``compact``) minified.  Starts with ``<!DOCTYPE html>``."""
    inline, head = stylesheet("inline.css"), stylesheet("head.css")
    if compact:
        # MJML's blocks (resets, column widths, Outlook fixes) stay as they are, in <head> only
        html = re.sub(r"<style\b", '<style data-premailer="ignore"', html)
        css_text, head = [minify_css(inline)], minify_css(head)
    else:
        # the earlier build: our rules in <style> blocks, everything inlined and every block kept
        html = html.replace("</head>", f"<style type=\"text/css\">{inline}</style>"
                                       f"<style type=\"text/css\">{head}</style></head>", 1)
        css_text = None
    inliner = _Inliner(
        html,
        css_text=css_text,
        allow_network=False,
        strip_important=False,  # @media rules need !important to beat the inlined styles
        keep_style_tags=not compact,  # compact: inline.css is not repeated; the ignored blocks stay anyway
        remove_classes=False,
        disable_validation=True,  # mso- properties are not CSS 2.1 but Outlook needs them
        cssutils_logging_level=logging.CRITICAL,
    )
    inliner.compact = compact
    out = inliner.transform(pretty_print=False)
    # premailer drops the doctype (premailer issue #156); without it clients render in quirks mode
    out = re.sub(r"^\s*<!doctype[^>]*>\s*", "", out, flags=re.I)
    if compact:
        out = out.replace("</head>", _head_block(head) + "</head>", 1)
        out = minify_html(out)
    else:
        out = out.replace("</head>", COLOR_SCHEME_META + "</head>", 1)
    return f"{DOCTYPE}\n{out}"


# -- minifying -----------------------------------------------------------------------------

_CSS_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_CSS_SPACE = re.compile(r"\s*([{};,>])\s*")


def minify_css(css: str) -> str:
    """Comments out, whitespace collapsed and dropped around ``{ } ; , >``. Spaces that
    separate words (``only screen and``, ``0 0 18px 0``, ``!important``) stay."""
    css = " ".join(_CSS_COMMENT.sub(" ", css).split())
    css = _CSS_SPACE.sub(r"\1", css)
    return css.replace(": ", ":").replace(";}", "}")


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


_BOX = re.compile(r"(?<![\w-])(margin|padding):((?:-?[\d.]+(?:px|em|%)?\s+){3}-?[\d.]+(?:px|em|%)?)(?=;|$)")


def _compact_style(match: re.Match) -> str:
    value = re.sub(r"\s*;\s*", ";", match.group(2)).strip().rstrip(";")
    value = re.sub(r"\s*:\s*", ":", value)
    value = re.sub(r",\s+", ",", value)
    value = _BOX.sub(_shorter_box, value)
    return f'{match.group(1)}"{value}"'


# one token: a <pre>, <title> or <style> element, a comment, a tag, or text between them
_TOKENS = re.compile(r"(<pre\b.*?</pre>|<title\b.*?</title>|<style\b[^>]*>.*?</style>|<!--.*?-->|<[^>]+>)",
                     re.S | re.I)
_STYLE_ATTR = re.compile(r'(\sstyle=)"([^"]*)"')


def minify_html(html: str) -> str:
    """Whitespace runs become one space (a newline when they held one: lines stay short for
    quoted-printable), style attributes lose their spaces, ``<style>`` blocks are minified.
    Nothing that renders changes: a run of whitespace renders as one space wherever it does at
    all, and ``<pre>`` and ``<title>`` are left alone."""
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
