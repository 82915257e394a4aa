"""Quoted-printable bodies for ``pipeline.delivery.message``.

- ``wire_html``: the HTML as a message carries it, its lines fitted to quoted-printable's 76
  characters at spaces that HTML reads as any whitespace
  (``pipeline.rendering.minify.fit_lines``), so few lines need a soft break (``=`` CRLF, 3
  bytes every 75 characters).  It renders as the rendered HTML does.  Both builders fit the
  HTML with its placeholders in, so they give the same decoded part.
- ``qp_static`` and ``qp_value``: the pieces ``MessageTemplate`` joins.  Every static piece is
  encoded on its own starting at column 0, and ends with a soft line break unless it ends
  with a real line break; every inserted value is encoded on its own lines and ends with a
  soft line break too.  Soft breaks vanish when decoded, so the text is exactly the rendered
  text, and no encoded line is longer than 76 characters.  A ``.`` at the start of an encoded
  line is written ``=2E`` so the bytes never need SMTP dot-stuffing.
"""
from __future__ import annotations

import binascii
from functools import lru_cache

from pipeline.rendering.minify import fit_lines


@lru_cache(maxsize=8)
def wire_html(html: str) -> str:
    """``html`` with its lines fitted for quoted-printable (see the module's docstring)."""
    return fit_lines(html)


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


def _no_leading_dots(encoded: bytes) -> bytes:
    """Write a line-initial "." as "=2E" (it decodes the same), re-wrapping the line
    if that makes it longer than 76.  ``encoded`` is LF-terminated here."""
    if not encoded.startswith(b".") and b"\n." not in encoded:
        return encoded
    return b"\n".join(_escape_dot(line) if line.startswith(b".") else line for line in encoded.split(b"\n"))


def _escape_dot(line: bytes) -> bytes:
    line = b"=2E" + line[1:]
    if len(line) <= 76:
        return line
    # split with a soft break at the last token boundary that fits (never inside an
    # "=XX" escape); the short tail gets the same treatment if it starts with "."
    boundaries, i = [], 0
    while i < len(line):
        boundaries.append(i)
        i += 3 if line[i] == 61 and i + 2 < len(line) else 1  # 61 is "="
    cut = max(b for b in boundaries if b <= 75)
    tail = line[cut:]
    return line[:cut] + b"=\n" + (b"=2E" + tail[1:] if tail.startswith(b".") else tail)


def qp_static(text: str) -> bytes:
    """Quoted-printable for a piece of body that starts at column 0.  The result
    ends at column 0: with the piece's own line break, or with a soft break."""
    if not text:
        return b""
    encoded = _no_leading_dots(binascii.b2a_qp(text.encode("utf-8"), istext=True))
    if not encoded.endswith(b"\n") or encoded.endswith(b"=\n"):
        encoded += b"=\n"
    return _crlf(encoded)


def qp_value(value: str) -> bytes:
    """Quoted-printable for an inserted value (no line breaks of its own)."""
    if not value:
        return b""
    encoded = binascii.b2a_qp(value.encode("utf-8"), istext=False)
    return _crlf(_no_leading_dots(encoded) + b"=\n")


def normalise_text(text: str) -> str:
    """Line ends as LF and a final line end, as the email package writes them."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"
