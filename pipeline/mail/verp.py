"""VERP return paths: ``bounces+<id>@<bounce_domain>``, one per message.

The envelope sender (MAIL FROM, which the receiving MTA writes as ``Return-Path``) of
every message names the row it was sent for, so a delivery status notification that
comes back days later says exactly whom it is about.  The From header never changes.

The id is 24 base32 characters (case-insensitive, since some MTAs fold local parts):
15 bytes = an 8-byte tag and 7 masked bytes.  The 7 bytes are the kind (``d``: a
newsletter ledger row in ``deliveries``; ``q``: a transactional ``mail_queue`` row) and
the row id (48 bits).  The tag is an HMAC-SHA256 (under ``pipeline.keys.secret``) of
those 7 bytes, and the mask is an HMAC of the tag (the synthetic-IV construction the
subscriber tokens use), so the id carries no readable number, no address, no topic,
and cannot be made up: a changed character fails the tag check in constant time.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from functools import lru_cache

from pipeline.keys import secret

LOCAL_PART = "bounces"
KINDS = {"d": "delivery", "q": "mail queue"}
_TAG, _BODY = 8, 7
_ID_RE = re.compile(r"bounces\+([a-z2-7]{24})@", re.IGNORECASE)


@dataclass(frozen=True)
class VerpId:
    kind: str  # "d" or "q"
    row_id: int


def bounce_domain(settings) -> str:
    return (settings.bounce_domain or settings.sender_domain).strip().lower()


def _keys(settings) -> tuple[bytes, bytes]:
    return _derived(secret(settings))


@lru_cache(maxsize=8)
def _derived(value: str) -> tuple[bytes, bytes]:
    """The tag and mask keys of one secret (derived once: every message of a send needs them)."""
    key = value.encode("utf-8")
    return (hmac.new(key, b"verp-tag", hashlib.sha256).digest(), hmac.new(key, b"verp-mask", hashlib.sha256).digest())


def encode(settings, kind: str, row_id: int) -> str:
    """The opaque id of one row (``kind`` 'd' or 'q')."""
    if kind not in KINDS:
        raise ValueError(f"unknown VERP kind {kind!r}")
    if not 0 < row_id < 2 ** 48:
        raise ValueError("row id out of range")
    tag_key, mask_key = _keys(settings)
    body = kind.encode("ascii") + row_id.to_bytes(6, "big")
    tag = hmac.digest(tag_key, body, "sha256")[:_TAG]
    mask = hmac.digest(mask_key, tag, "sha256")[:_BODY]
    sealed = tag + bytes(a ^ b for a, b in zip(body, mask))
    return base64.b32encode(sealed).decode("ascii").lower()


def decode(settings, token: str) -> VerpId | None:
    """The row an id names, or None for anything we did not make (never an exception)."""
    try:
        sealed = base64.b32decode(token.upper())
    except (binascii.Error, ValueError):
        return None
    if len(sealed) != _TAG + _BODY:
        return None
    tag_key, mask_key = _keys(settings)
    tag = sealed[:_TAG]
    mask = hmac.digest(mask_key, tag, "sha256")[:_BODY]
    body = bytes(a ^ b for a, b in zip(sealed[_TAG:], mask))
    if not hmac.compare_digest(hmac.digest(tag_key, body, "sha256")[:_TAG], tag):
        return None
    kind = chr(body[0])
    if kind not in KINDS:
        return None
    return VerpId(kind, int.from_bytes(body[1:], "big"))


def return_path(settings, kind: str, row_id: int) -> str:
    """The envelope sender for one row: ``bounces+<id>@<bounce_domain>``."""
    return f"{LOCAL_PART}+{encode(settings, kind, row_id)}@{bounce_domain(settings)}"


def find(settings, text: str) -> VerpId | None:
    """The first valid VERP id in ``text`` (a header, an address, a report's body), or None."""
    for match in _ID_RE.finditer(text or ""):
        found = decode(settings, match.group(1))
        if found is not None:
            return found
    return None
