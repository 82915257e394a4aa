"""Signed, opaque subscriber tokens and the keyed address hash.

A token names one subscriber for one purpose (``confirm``, ``unsubscribe``,
``preferences``, ...).  It carries no address and no topics, and it is not
even readable: the subscriber id and the issue time are encrypted with a
synthetic-IV construction built from HMAC-SHA256 alone (deterministic
authenticated encryption, as in RFC 5297's SIV mode):

    tag        = HMAC(k_mac, purpose | id | issued)[:16]
    ciphertext = (id | issued) XOR HMAC(k_enc, tag)[:12]
    token      = base64url(version | ciphertext | tag)        # 39 characters

Reading recomputes the tag from the decrypted fields and compares it in
constant time, so a forged, tampered or wrong-purpose token fails the same
way, and changing the secret invalidates every token.  Both keys are derived
from the one secret (``NEWSLETTER_SECRET``); the derived HMAC objects are
cached and copied per call, because the delivery stage calls
``unsubscribe_url`` once per recipient (about 5 µs a call; see
``bench/subscribers_import.py``).

The secret comes from ``pipeline.keys.secret`` (``NEWSLETTER_SECRET``, or the
embedded demo's generated key).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from functools import lru_cache

from pipeline import clock
from pipeline.errors import SubscriberError
from pipeline.keys import secret

VERSION = 1
_PLAIN = struct.Struct(">QI")  # subscriber id (8 bytes), issued at (seconds since the epoch, 4 bytes)
_TAG_BYTES = 16
_TOKEN_BYTES = 1 + _PLAIN.size + _TAG_BYTES

# A confirm token names a sign-up request (subscribers.signup), not a subscriber;
# the purpose string changed with that, so a link of the old kind is refused.
CONFIRM = "confirm-request"
UNSUBSCRIBE = "unsubscribe"
PREFERENCES = "preferences"
DATA = "data"  # names a one-time access link (pipeline.privacy.access)



class _Keys:
    """HMAC objects keyed once per secret; ``.copy()`` per call avoids re-keying."""

    __slots__ = ("mac", "enc", "email", "form")

    def __init__(self, secret: str):
        root = secret.encode("utf-8")

        def derive(label: bytes) -> "hmac.HMAC":
            key = hmac.new(root, b"library-newsletter/" + label, hashlib.sha256).digest()
            return hmac.new(key, digestmod=hashlib.sha256)

        self.mac = derive(b"token-mac/v1")
        self.enc = derive(b"token-enc/v1")
        self.email = derive(b"email-hash/v1")
        self.form = derive(b"form-csrf/v1")


@lru_cache(maxsize=8)
def _keys(secret: str) -> _Keys:
    if not secret:
        raise SubscriberError("empty secret: set NEWSLETTER_SECRET in the environment")
    return _Keys(secret)


def _tag(keys: _Keys, purpose: str, plain: bytes) -> bytes:
    h = keys.mac.copy()
    h.update(purpose.encode("ascii"))
    h.update(b"\0")
    h.update(plain)
    return h.digest()[:_TAG_BYTES]


def _pad(keys: _Keys, tag: bytes) -> bytes:
    h = keys.enc.copy()
    h.update(tag)
    return h.digest()[:_PLAIN.size]


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def make_token(secret: str, purpose: str, subscriber_id: int) -> str:
    """An opaque token for ``subscriber_id`` and ``purpose``, issued now."""
    if not 0 < subscriber_id < 2**63:
        raise SubscriberError(f"subscriber id out of range: {subscriber_id}")
    keys = _keys(secret)
    issued = int(clock.now().timestamp())
    plain = _PLAIN.pack(subscriber_id, issued)
    tag = _tag(keys, purpose, plain)
    raw = bytes((VERSION,)) + _xor(plain, _pad(keys, tag)) + tag
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def read_token(secret: str, purpose: str, token: str, max_age: int | None = None) -> int:
    """The subscriber id inside ``token``; ``SubscriberError`` if it is forged,
    tampered with, meant for another purpose, or older than ``max_age`` seconds."""
    keys = _keys(secret)
    if not isinstance(token, str) or len(token) != 39 or not token.isascii():
        raise SubscriberError("this link is not valid (malformed token)")
    try:
        raw = base64.urlsafe_b64decode(token + "=")
    except (binascii.Error, ValueError):
        raise SubscriberError("this link is not valid (malformed token)") from None
    if len(raw) != _TOKEN_BYTES or raw[0] != VERSION:
        raise SubscriberError("this link is not valid (malformed token)")
    # Base64 has several spellings of the same bytes (the unused low bits of the
    # last character); accept only the canonical one so a token is one string.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        raise SubscriberError("this link is not valid (malformed token)")
    ciphertext, tag = raw[1:1 + _PLAIN.size], raw[1 + _PLAIN.size:]
    plain = _xor(ciphertext, _pad(keys, tag))
    if not hmac.compare_digest(_tag(keys, purpose, plain), tag):
        raise SubscriberError("this link is not valid (bad signature)")
    subscriber_id, issued = _PLAIN.unpack(plain)
    if max_age is not None and clock.now().timestamp() - issued > max_age:
        raise SubscriberError("this link has expired")
    return subscriber_id


def audience_label(settings, topic: str) -> str:
    """A short, stable, opaque label for an issue that goes to one topic's audience.

    It tells that issue apart from the day's general one in the ledger and the
    archive URL without naming the topic: a keyed hash, so nobody can test it
    against the (public) list of topics."""
    digest = hmac.new(secret(settings).encode(), b"audience-label\0" + topic.encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:10]).decode("ascii").lower()


def unsubscribe_url(settings, subscriber_id: int) -> str:
    """``{base_url}/unsubscribe/{token}``: never expires (a person may leave years later)."""
    return f"{settings.base_url}/unsubscribe/{make_token(secret(settings), UNSUBSCRIBE, subscriber_id)}"


def preferences_url(settings, subscriber_id: int) -> str:
    """``{base_url}/preferences/{token}``: never expires."""
    return f"{settings.base_url}/preferences/{make_token(secret(settings), PREFERENCES, subscriber_id)}"


def confirm_url(settings, request_id: int) -> str:
    """``{base_url}/confirm/{token}`` for one sign-up request: expires after ``confirm_token_days``."""
    return f"{settings.base_url}/confirm/{make_token(secret(settings), CONFIRM, request_id)}"


def data_url(settings, link_id: int) -> str:
    """``{base_url}/data/{token}`` for one access link: export or erase, once, within ``data_link_minutes``."""
    return f"{settings.base_url}/data/{make_token(secret(settings), DATA, link_id)}"


def confirm_max_age(settings) -> int:
    return int(settings.confirm_token_days) * 86400


def email_hash(settings, email: str) -> str:
    """HMAC-SHA256 (hex) of the normalised, lower-cased address: the suppression key.

    Callers pass ``store.email_key(address)``; the hash is lower-cased here too
    so a caller cannot create two keys for one person.
    """
    h = _keys(secret(settings)).email.copy()
    h.update(email.strip().lower().encode("utf-8"))
    return h.hexdigest()


def form_token(settings, subject: str, issued: int | None = None) -> str:
    """A CSRF token for a form bound to ``subject`` (the preferences token) and a time."""
    issued = int(clock.now().timestamp()) if issued is None else issued
    h = _keys(secret(settings)).form.copy()
    h.update(f"{subject}\0{issued}".encode("utf-8"))
    return f"{issued}.{h.hexdigest()[:32]}"


def check_form_token(settings, subject: str, value: str, max_age: int = 2 * 3600) -> bool:
    """True if ``value`` came from ``form_token(settings, subject)`` within ``max_age`` seconds."""
    issued_text, _, _ = (value or "").partition(".")
    if not issued_text.isdigit() or len(issued_text) > 12:
        return False
    issued = int(issued_text)
    if not 0 <= clock.now().timestamp() - issued <= max_age:
        return False
    return hmac.compare_digest(form_token(settings, subject, issued).encode(), value.encode("utf-8", "replace"))
