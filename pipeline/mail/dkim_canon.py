"""DKIM relaxed/relaxed canonicalisation (RFC 6376 3.4.2 and 3.4.4), and the same for a message laid out in pieces.

Two ways in, giving the same canonical forms:

- a whole message as bytes (``split_message``, ``canonical_fields``, ``relaxed_body``): a few
  C-speed passes over the bytes;
- a ``Layout``: an issue's messages as the header lines they all share, per-recipient header
  lines, and a body made of fixed pieces with per-recipient values between them.  ``Prepared``
  canonicalises the fixed parts once per issue and hashes the fixed prefix once, so a message
  costs the canonical form of its few short values and one SHA-256 pass over the rest, and
  only those values need to reach a signing process: never the whole message.

Why the pieces may be canonicalised one by one: relaxed body canonicalisation works line by line
(whitespace runs, whitespace at a line end), except that empty lines at the very end of the body
go.  So when every piece is whole CRLF-terminated lines, the canonical body is the pieces'
canonical forms joined, with the last piece trimmed of empty lines at its end.  ``Prepared``
checks that once per issue and each value's line end per message; where it does not hold it
canonicalises the joined body whole, which is always right.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Sequence

from pipeline.errors import DeliveryError

_WSP_RUN = re.compile(rb"  +")  # run after tabs became spaces; a literal prefix keeps the scan fast
_HEADER_WSP = re.compile(rb"[ \t]+")


def relaxed_lines(data: bytes) -> bytes:
    """Whole CRLF lines relaxed: whitespace runs become one space and whitespace at line ends goes."""
    if b"\t" in data:
        data = data.replace(b"\t", b" ")
    if b"  " in data:
        data = _WSP_RUN.sub(b" ", data)
    if b" \r\n" in data:  # after the lines above, a single space is all that can precede a line end
        data = data.replace(b" \r\n", b"\r\n")
    return data


def relaxed_body(body: bytes) -> bytes:
    """The relaxed canonical body: whitespace runs become one space, whitespace at line ends goes,
    empty lines at the end go, and a non-empty body ends with CRLF (an empty one stays empty)."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    body = relaxed_lines(body)
    end = len(body)
    while end >= 2 and body.endswith(b"\r\n", 0, end):
        end -= 2
    if not end:
        return b""
    return body if end == len(body) - 2 else body[:end] + b"\r\n"


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """``name:value`` relaxed (lower-case name, unfolded value, one space per whitespace run,
    none around the colon or at the end), without the line's CRLF."""
    value = value.replace(b"\r\n", b"").replace(b"\n", b"").replace(b"\r", b"")
    return name.rstrip(b" \t").lower() + b":" + _HEADER_WSP.sub(b" ", value).strip(b" \t")


def split_head(head: bytes) -> list[tuple[bytes, bytes]]:
    """[(name, raw value with its folds)] of CRLF header lines (without the blank line)."""
    fields: list[tuple[bytes, bytes]] = []
    if not head:
        return fields
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            raise DeliveryError(f"cannot DKIM-sign: not a header line: {line[:60]!r}")
        fields.append((name, value))
    return fields


def split_message(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """([(name, raw value with its folds)], body) of a CRLF message."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        head, body = data[:-2] if data.endswith(b"\r\n") else data, b""
    else:
        head, body = data[:end], data[end + 4:]
    return split_head(head), body


_CANONICAL: dict[tuple[bytes, bytes], bytes] = {}  # header lines repeat across an issue's messages


def _canonical(name: bytes, value: bytes) -> bytes:
    line = _CANONICAL.get((name, value))
    if line is None:
        if len(_CANONICAL) > 4096:  # per-recipient lines never repeat: keep the memo small
            _CANONICAL.clear()
        line = _CANONICAL[(name, value)] = relaxed_header(name, value)
    return line


def canonical_fields(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """[(lower-case name, canonical line)] of split header fields, in order."""
    return [(name.strip().lower(), _canonical(name, value)) for name, value in fields]


def head_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """``canonical_fields`` of CRLF-terminated header lines (a message's per-recipient lines)."""
    if not head:
        return []
    return [(name.strip().lower(), relaxed_header(name, value))
            for name, value in split_head(head[:-2] if head.endswith(b"\r\n") else head)]


# -- a message in pieces ----------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """The messages of one issue as a signer sees them.  ``message(head, values)`` is the one place
    their bytes are joined: the shared header lines, the recipient's own header lines (``head``,
    CRLF-terminated), the blank line, then ``body`` with each int replaced by ``values[int]``.
    ``key`` names the layout across processes (unique per issue template)."""
    key: str
    head: bytes = field(repr=False)
    body: tuple = field(repr=False)  # bytes (fixed) or int (the index of a per-message value)

    def message(self, head: bytes, values: Sequence[bytes], *, before: bytes = b"", after: bytes = b"") -> bytes:
        """The message; ``before`` (signature headers) and ``after`` (the end of DATA) joined in
        the same pass, so a send copies its 40 KB once, not three times."""
        return b"".join([before, self.head, head, b"\r\n"]
                        + [piece if piece.__class__ is bytes else values[piece] for piece in self.body] + [after])


class Prepared:
    """A ``Layout``'s canonical forms, made once per process: the shared header fields, and the body
    as canonical fixed pieces with the SHA-256 state of the fixed prefix (module docstring)."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.fields = canonical_fields(split_head(layout.head[:-2] if layout.head.endswith(b"\r\n") else layout.head))
        body = list(layout.body)
        fixed = [p for p in body if p.__class__ is bytes]
        # piecewise only when every fixed piece is whole lines and a fixed piece with text ends the body
        self.piecewise = (bool(body) and body[-1].__class__ is bytes and all(p.endswith(b"\r\n") for p in fixed if p)
                          and bool(relaxed_body(body[-1])))
        prefix = hashlib.sha256()
        self.rest: list = []
        if self.piecewise:
            body[-1] = relaxed_body(body[-1])  # the end of the body: empty lines there go
            canon = [relaxed_lines(p) if p.__class__ is bytes and i < len(body) - 1 else p for i, p in enumerate(body)]
            first_slot = next((i for i, p in enumerate(canon) if p.__class__ is not bytes), len(canon))
            for piece in canon[:first_slot]:
                prefix.update(piece)
            merged: list = []  # neighbouring fixed pieces as one update
            for piece in canon[first_slot:]:
                if piece.__class__ is bytes and merged and merged[-1].__class__ is bytes:
                    merged[-1] += piece
                else:
                    merged.append(piece)
            self.rest = merged
        self.prefix = prefix

    def body_hash(self, values: Sequence[bytes]) -> bytes:
        """SHA-256 of the canonical body of ``layout.message(..., values)``."""
        if self.piecewise and all(not v or v.endswith(b"\r\n") for v in values):
            h = self.prefix.copy()
            for piece in self.rest:
                h.update(piece if piece.__class__ is bytes else relaxed_lines(values[piece]))
            return h.digest()
        joined = b"".join(p if p.__class__ is bytes else values[p] for p in self.layout.body)
        return hashlib.sha256(relaxed_body(joined)).digest()
