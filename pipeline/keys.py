"""The one signing secret: ``NEWSLETTER_SECRET``, or, for the embedded demo only, a generated key.

Subscriber tokens, the keyed address hash, Message-IDs and audience labels are all
derived from it. With transport ``outbox`` and no ``NEWSLETTER_SECRET``, a random key
is generated once into ``<var_dir>/secret_key`` (mode 0600; ``var/`` is ignored by
git). With any other transport a missing secret is an error: real mail must not carry
links signed with a key nobody chose.
"""
from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path

from pipeline.errors import SubscriberError

DEV_SECRET_FILE = "secret_key"


@lru_cache(maxsize=8)
def _dev_secret(var_dir: str) -> str:
    path = Path(var_dir) / DEV_SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes starting together agree on one key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text(encoding="ascii").strip()
        if not value:
            raise SubscriberError(f"{path} is empty: delete it or set NEWSLETTER_SECRET") from None
        return value
    with os.fdopen(fd, "w", encoding="ascii") as f:
        value = secrets.token_urlsafe(32)
        f.write(value + "\n")
    return value


def secret(settings) -> str:
    """The signing secret: ``NEWSLETTER_SECRET``, or the generated demo key when
    the transport is ``outbox`` (mail never leaves the machine)."""
    if settings.secret_key:
        return settings.secret_key
    if settings.transport == "outbox":
        return _dev_secret(str(settings.var_dir))
    raise SubscriberError("NEWSLETTER_SECRET is not set: subscriber links cannot be signed "
                          "(set it in the environment; the generated demo key is used only with transport=outbox)")


def same(given: object, expected: str) -> bool:
    """Constant-time equality of a value someone sent with the one we expect. Compared as UTF-8
    bytes: ``hmac.compare_digest`` refuses str with non-ASCII characters (a TypeError, which would
    be a server error for a hostile form field or webhook), and the sender chooses the characters."""
    import hmac

    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))
