"""DKIM signing of finished messages (RFC 6376), with OpenSSL doing the arithmetic.

``DkimSigner`` signs each message separately, because the body differs per
recipient (the token URLs).  Relaxed/relaxed canonicalisation is ours
(``pipeline.mail.dkim_canon``: a few C-speed passes over the bytes), the body hash
is hashlib's SHA-256, and the RSA signature (RSASSA-PKCS1-v1_5 with SHA-256) is
made by OpenSSL through ``cryptography``.  A whole 70 KB message costs about
0.45 ms on one core, of which the RSA-2048 signature is 0.25-0.33 ms; dkimpy's
pure-Python RSA took 7-9.5 ms (bench/README.md).  An issue's messages are signed
from their parts (``signatures_for`` with a ``dkim_canon.Layout``): the fixed
bytes are canonicalised once per issue, so a message costs its few values, one
SHA-256 pass and the signature.  ``pipeline.mail.dkim_pool`` spreads the signing
of a batch across processes, sending them only those parts.

With an Ed25519 key configured as well, each message is signed twice (RFC 8463,
``ed25519-sha256`` under its own selector), RSA first: receivers that do not know
Ed25519 ignore that signature and verify the RSA one.

Keys come from the environment (``DKIM_PRIVATE_KEY``, ``DKIM_ED25519_PRIVATE_KEY``)
or from files outside the repository; a key that cannot be used is one
``DeliveryError`` line when the signer is made, never an error mid-send.
"""
from __future__ import annotations

import base64
import hashlib
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import clock
from pipeline.errors import DeliveryError
from pipeline.mail.dkim_canon import (Layout, Prepared, canonical_fields, head_fields, relaxed_body,
                                      relaxed_header, split_message)

# Headers the DKIM signature covers (checklist 19 asks for the first four at least), every instance present.
DKIM_HEADERS = (b"From", b"To", b"Subject", b"Date", b"Message-ID", b"List-Unsubscribe",
                b"List-Unsubscribe-Post", b"List-Id", b"MIME-Version", b"Content-Type", b"Reply-To", b"Feedback-ID")
# Named once more than they occur ("oversigned"), so nobody on the way can add a second one unseen.
OVERSIGNED = frozenset({b"from", b"to", b"subject", b"date", b"message-id", b"list-unsubscribe",
                        b"list-unsubscribe-post", b"reply-to"})
_SIGNED = tuple(h.lower() for h in DKIM_HEADERS)
MIN_RSA_BITS = 1024  # RFC 8301: verifiers need not accept shorter keys

REPO_ROOT = Path(__file__).resolve().parents[2]
_DNS_NAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


# -- keys ---------------------------------------------------------------------------------------------

def _read_key(value: str, path_value: str, what: str) -> bytes | None:
    if value:
        return value.encode("ascii", "replace")
    if not path_value:
        return None
    path = Path(path_value).expanduser().resolve()
    if path.is_relative_to(REPO_ROOT):
        raise DeliveryError(f"the {what} must live outside the repository", path=path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DeliveryError(f"cannot read the {what}: {exc.strerror}", path=path) from None


def dkim_key(settings) -> bytes | None:
    """The DKIM RSA private key (PEM) from DKIM_PRIVATE_KEY, or the file at
    dkim_private_key_path, which must lie outside the repository."""
    return _read_key(settings.dkim_private_key, settings.dkim_private_key_path, "DKIM key")


def ed25519_key(settings) -> bytes | None:
    """The Ed25519 private key (PEM) from DKIM_ED25519_PRIVATE_KEY or dkim_ed25519_private_key_path."""
    return _read_key(settings.dkim_ed25519_private_key, settings.dkim_ed25519_private_key_path, "DKIM Ed25519 key")


def load_private_key(pem: bytes, kind: str):
    """A ``cryptography`` private key of ``kind`` ('rsa' or 'ed25519'), or one clear DeliveryError."""
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    label = "DKIM key" if kind == "rsa" else "DKIM Ed25519 key"
    try:
        key = load_pem_private_key(pem, password=None)
    except TypeError:
        raise DeliveryError(f"the {label} is encrypted; give it unencrypted (from the environment or a "
                            "file only the sender can read)") from None
    except Exception as exc:  # cryptography raises ValueError, or UnsupportedAlgorithm
        raise DeliveryError(f"the {label} is not a usable PEM private key ({type(exc).__name__})") from None
    wanted = rsa.RSAPrivateKey if kind == "rsa" else ed25519.Ed25519PrivateKey
    if not isinstance(key, wanted):
        raise DeliveryError(f"the {label} is not an {'RSA' if kind == 'rsa' else 'Ed25519'} private key")
    if kind == "rsa" and key.key_size < MIN_RSA_BITS:
        raise DeliveryError(f"the {label} has {key.key_size} bits; receivers need at least {MIN_RSA_BITS} "
                            "(2048 is usual)")
    return key


def _dns_name(value: str, what: str) -> bytes:
    if not isinstance(value, str) or not _DNS_NAME.fullmatch(value):
        raise DeliveryError(f"{what} {value!r} is not a plain DNS name (letters, digits, hyphens, dots)")
    return value.encode("ascii")


# -- signing ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SigningKeys:
    """What a signer needs, in a form that can be sent to another process (PEM bytes, not key objects)."""
    selector: str
    domain: str
    rsa_pem: bytes = field(repr=False)  # a repr in a log or a traceback never shows a key
    ed25519_selector: str = ""
    ed25519_pem: bytes = field(default=b"", repr=False)


class DkimSigner:
    """Prepends DKIM-Signature headers (rsa-sha256, and ed25519-sha256 when configured;
    relaxed/relaxed) to a message."""

    def __init__(self, selector: str, domain: str, key: bytes, *, ed25519_selector: str = "",
                 ed25519_pem: bytes = b"", processes: int = 0):
        self.keys = SigningKeys(selector, domain, key, ed25519_selector, ed25519_pem)
        self.selector = _dns_name(selector, "dkim_selector")
        self.domain = _dns_name(domain, "dkim_domain")
        self._rsa = load_private_key(key, "rsa")
        self._ed = None
        if ed25519_pem:
            self.ed25519_selector = _dns_name(ed25519_selector, "dkim_ed25519_selector")
            self._ed = load_private_key(ed25519_pem, "ed25519")
        self.processes = max(0, int(processes))
        self._pool = None
        self._layouts: dict[str, Prepared] = {}
        self.sign(b"From: a@b.c\r\nSubject: x\r\n\r\nx\r\n")  # fail now, not at the first message

    @classmethod
    def from_keys(cls, keys: SigningKeys) -> "DkimSigner":
        return cls(keys.selector, keys.domain, keys.rsa_pem, ed25519_selector=keys.ed25519_selector,
                   ed25519_pem=keys.ed25519_pem)

    def signatures(self, data: bytes, stamp: int | None = None) -> bytes:
        """The DKIM-Signature header lines (CRLF-terminated) for ``data``, to be put on top of it;
        ``stamp`` is the t= time (default: now)."""
        fields, body = split_message(data)
        return self._signed(canonical_fields(fields), hashlib.sha256(relaxed_body(body)).digest(), stamp)

    # -- messages in pieces (dkim_canon.Layout): the issue-wide work done once ------------------------
    def learn(self, layout: Layout) -> Prepared:
        """The layout's canonical forms, made on first use and kept (the last few layouts)."""
        prepared = self._layouts.get(layout.key)
        if prepared is None:
            if len(self._layouts) >= 4:
                self._layouts.pop(next(iter(self._layouts)))
            prepared = self._layouts[layout.key] = Prepared(layout)
        return prepared

    def knows(self, key: str) -> bool:
        return key in self._layouts

    def signatures_for(self, layout: Layout | str, head: bytes, values, stamp: int | None = None) -> bytes:
        """``signatures(layout.message(head, values))``, without joining or scanning the message:
        the layout's fixed parts were canonicalised once (``learn``).  ``layout`` may be the key
        of a layout learnt before."""
        prepared = self._layouts[layout] if isinstance(layout, str) else self.learn(layout)
        return self._signed(prepared.fields + head_fields(head), prepared.body_hash(values), stamp)

    def _signed(self, fields: list[tuple[bytes, bytes]], body_hash: bytes, stamp: int | None) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        names, lines = _select(fields)
        bh = base64.b64encode(body_hash)
        signed = b"\r\n".join(lines) + b"\r\n" if lines else b""
        t = str(int(clock.now().timestamp()) if stamp is None else int(stamp)).encode("ascii")
        h = b":".join(names)
        out = []
        for algorithm, selector in ((b"rsa-sha256", self.selector),) + (
                ((b"ed25519-sha256", self.ed25519_selector),) if self._ed is not None else ()):
            head = _signature_head(algorithm, self.domain, selector, t, h, bh)
            to_sign = signed + relaxed_header(b"DKIM-Signature", head + b"b=")
            if algorithm == b"rsa-sha256":
                raw = self._rsa.sign(to_sign, padding.PKCS1v15(), hashes.SHA256())
            else:  # RFC 8463: Ed25519 over the SHA-256 of the same data
                raw = self._ed.sign(hashlib.sha256(to_sign).digest())
            out.append(b"DKIM-Signature:" + head + b"b=" + _fold_b(base64.b64encode(raw)) + b"\r\n")
        return b"".join(out)

    def sign(self, data: bytes) -> bytes:
        """``data`` with its DKIM-Signature header(s) on top."""
        return self.signatures(data) + data

    def sign_many(self, messages: list[bytes]) -> list[bytes]:
        """Each message signed, in this process."""
        return [self.signatures(m) + m for m in messages]

    def header_or_error(self, data: bytes, stamp: int) -> bytes | str:
        """The signature headers for ``data``, or why it cannot be signed (one message's problem
        must not stop the others: the caller records it against that message)."""
        return _or_error(self.signatures, data, stamp)

    def headers_for(self, layout: Layout | str, items, stamp: int) -> list[bytes | str]:
        """``signatures_for`` each (head, values) of ``items``, or for one that cannot be signed, why."""
        return [_or_error(self.signatures_for, layout, head, values, stamp) for head, values in items]

    async def sign_batch(self, messages: list[bytes]) -> list[bytes | str]:
        """Each message signed (or, for one that cannot be, the reason as a string).  With
        ``processes`` > 0 the work runs in a pool of that many processes while the event loop
        goes on (``pipeline.mail.dkim_pool``)."""
        stamp = int(clock.now().timestamp())
        headers = None
        if self.processes and messages:
            headers = await self._workers().signatures(messages, stamp)
            if headers is None:  # the pool broke (a worker died): sign here from now on rather than stop
                self._lose_pool()
        if headers is None:
            headers = [self.header_or_error(m, stamp) for m in messages]
        return [h + m if isinstance(h, bytes) else h for h, m in zip(headers, messages)]

    async def headers_batch(self, layout: Layout, items: list[tuple[bytes, tuple]]) -> list[bytes | str]:
        """The signature headers of each (head, values) of ``layout`` (or, for one that cannot be
        signed, the reason).  With ``processes`` > 0 the pool signs while the event loop goes on,
        and what crosses to it is the per-recipient parts (about 1 KB a message), not the message."""
        stamp = int(clock.now().timestamp())
        headers = None
        if self.processes and items:
            headers = await self._workers().headers_for(layout, items, stamp)
            if headers is None:
                self._lose_pool()
        if headers is None:
            headers = self.headers_for(layout, items, stamp)
        return headers

    def _workers(self):
        if self._pool is None:
            from pipeline.mail.dkim_pool import SigningPool
            self._pool = SigningPool(self.keys, self.processes)
            weakref.finalize(self, self._pool.close)  # the workers go with the signer
        return self._pool

    def _lose_pool(self) -> None:
        self.close()
        self.processes = 0

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _or_error(sign, *args) -> bytes | str:
    try:
        return sign(*args)
    except DeliveryError as exc:
        return str(exc)
    except Exception as exc:  # a bug: still one message's failure, recorded with its row
        return f"cannot DKIM-sign the message: {type(exc).__name__}: {exc}"


def _select(fields: list[tuple[bytes, bytes]]) -> tuple[list[bytes], list[bytes]]:
    """(the h= names, the canonical header lines they select) of [(lower-case name, canonical line)], per
    RFC 6376 5.4.2: a name listed n times selects its last n instances, bottom up; names beyond the
    instances select nothing."""
    by_name: dict[bytes, list[bytes]] = {}
    for name, line in fields:
        by_name.setdefault(name, []).append(line)
    names, lines = [], []
    for key in _SIGNED:
        for line in reversed(by_name.get(key, ())):
            names.append(key)
            lines.append(line)
        if key in OVERSIGNED:
            names.append(key)
    return names, lines


def _signature_head(algorithm: bytes, domain: bytes, selector: bytes, stamp: bytes, h: bytes, bh: bytes) -> bytes:
    """The DKIM-Signature value up to ``b=``, folded to lines of at most 78 characters (between tags, and
    after a colon of h=); relaxed canonicalisation unfolds it again.  ``b=`` starts a line of its own."""
    items = [(b"v=1;", b" "), (b"a=" + algorithm + b";", b" "), (b"c=relaxed/relaxed;", b" "),
             (b"d=" + domain + b";", b" "), (b"s=" + selector + b";", b" "), (b"t=" + stamp + b";", b" ")]
    names = h.split(b":")
    items += [(b"h=" if i == 0 else b"") + name + (b":" if i < len(names) - 1 else b";") for i, name in enumerate(names)]
    items[6:] = [(text, b" " if i == 0 else b"") for i, text in enumerate(items[6:])]
    items.append((b"bh=" + bh + b";", b" "))
    out, width = b"", len(b"DKIM-Signature:")
    for text, sep in items:
        if width + len(sep) + len(text) > 78:
            out += b"\r\n " + text
            width = 1 + len(text)
        else:
            out += sep + text
            width += len(sep) + len(text)
    return out + b"\r\n "


def _fold_b(value: bytes) -> bytes:
    """The b= value after a line's " b=": 75 characters, then 77 a line."""
    chunks = [value[:75]] + [value[i:i + 77] for i in range(75, len(value), 77)]
    return b"\r\n ".join(c for c in chunks if c)


def dkim_signer(settings) -> DkimSigner | None:
    """A signer when ``dkim_selector`` and a key are set, else None."""
    key = dkim_key(settings) if settings.dkim_selector else None
    if key is None:
        if settings.dkim_ed25519_selector:  # receivers that ignore Ed25519 would see no signature at all
            raise DeliveryError("dkim_ed25519_selector is set but RSA signing is off: the Ed25519 signature "
                                "comes in addition to the RSA one (set dkim_selector and DKIM_PRIVATE_KEY)")
        return None
    ed_pem = ed25519_key(settings) if settings.dkim_ed25519_selector else None
    if settings.dkim_ed25519_selector and ed_pem is None:
        raise DeliveryError("dkim_ed25519_selector is set but there is no Ed25519 key "
                            "(DKIM_ED25519_PRIVATE_KEY or dkim_ed25519_private_key_path)")
    return DkimSigner(settings.dkim_selector, settings.dkim_domain or settings.sender_domain, key,
                      ed25519_selector=settings.dkim_ed25519_selector, ed25519_pem=ed_pem or b"",
                      processes=sign_processes(settings))


def sign_processes(settings) -> int:
    """Worker processes for signing: the setting, or with -1 one per core beyond the first (0 on one core)."""
    import os
    wanted = int(settings.dkim_sign_processes)
    if wanted >= 0:
        return wanted
    return max(0, (os.cpu_count() or 1) - 1)
