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
rendering: layout attributes premailer copies onto inline elements here, and
``pipeline.rendering.minify`` the rest (whitespace, classes only the inliner
needed, MJML's leftovers).  The message fits the lines for quoted-printable
(``pipeline.delivery.qp``).

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

from pipeline.rendering.minify import compact as compact_html
from pipeline.rendering.minify import minify_css

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
        out = compact_html(out.replace(' data-premailer="ignore"', ""))  # only premailer reads it
    else:
        out = out.replace("</head>", COLOR_SCHEME_META + "</head>", 1)
    return f"{DOCTYPE}\n{out}"
