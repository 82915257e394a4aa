"""DKIM signing of finished messages (split out of ``pipeline/delivery/message.py``).

``DkimSigner`` signs each message separately, because the body differs per
recipient (the token URLs).  It costs an RSA signature plus dkimpy's body
canonicalisation in Python: roughly 1-2 ms per 30 KB message, which caps one core
at a few hundred signed messages a second (see bench/README.md).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import DeliveryError

# Headers the DKIM signature covers (checklist 19 asks for the first four at least).
DKIM_HEADERS = (b"From", b"To", b"Subject", b"Date", b"Message-ID", b"List-Unsubscribe",
                b"List-Unsubscribe-Post", b"List-Id", b"MIME-Version", b"Content-Type")

REPO_ROOT = Path(__file__).resolve().parents[2]


def dkim_key(settings) -> bytes | None:
    """The DKIM private key (PEM) from DKIM_PRIVATE_KEY, or the file at
    dkim_private_key_path, which must lie outside the repository."""
    if settings.dkim_private_key:
        return settings.dkim_private_key.encode("ascii")
    if not settings.dkim_private_key_path:
        return None
    path = Path(settings.dkim_private_key_path).expanduser().resolve()
    if path.is_relative_to(REPO_ROOT):
        raise DeliveryError("the DKIM key must live outside the repository", path=path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DeliveryError(f"cannot read the DKIM key: {exc.strerror}", path=path) from None


class DkimSigner:
    """Prepends a DKIM-Signature (rsa-sha256, relaxed/relaxed) to a message."""

    def __init__(self, selector: str, domain: str, key: bytes):
        import dkim  # dkimpy; imported only when signing is on
        self._dkim = dkim
        self.selector = selector.encode("ascii")
        self.domain = domain.encode("ascii")
        self.key = key
        try:  # fail now, not at the first message
            self.sign(b"From: a@b.c\r\nSubject: x\r\n\r\nx\r\n")
        except dkim.DKIMException as exc:
            raise DeliveryError(f"DKIM key or selector unusable: {exc}") from None

    def sign(self, data: bytes) -> bytes:
        signature = self._dkim.sign(data, self.selector, self.domain, self.key, canonicalize=(b"relaxed", b"relaxed"),
                                    include_headers=list(DKIM_HEADERS), linesep=b"\r\n")
        return signature + data


def dkim_signer(settings) -> DkimSigner | None:
    """A signer when ``dkim_selector`` and a key are set, else None."""
    if not settings.dkim_selector:
        return None
    key = dkim_key(settings)
    if key is None:
        return None
    return DkimSigner(settings.dkim_selector, settings.dkim_domain or settings.sender_domain, key)
