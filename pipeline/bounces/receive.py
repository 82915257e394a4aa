"""Ways in by mail: an SMTP/LMTP receiver for the MX to hand bounces to, and an IMAP poller.

Both hand each message's raw bytes to ``pipeline.bounces.process.ingest_message``.
Nothing is lost: the receiver answers 250 only after the notification (and what it
caused) is committed, and 451 (try again) if the database failed; the poller deletes
a message from the mailbox only after it was committed.
"""
from __future__ import annotations

import asyncio
import imaplib
import logging
import ssl
from dataclasses import dataclass, field

from pipeline.bounces.process import ingest_message
from pipeline.errors import BounceError

log = logging.getLogger("newsletter.bounces")
MAX_MESSAGE = 10 * 1024 * 1024  # a bounce with its original attached is well under this


class BounceHandler:
    """aiosmtpd handler: every message accepted is processed before it is acknowledged."""

    def __init__(self, engine, settings, source: str = "smtp"):
        self.engine, self.settings, self.source = engine, settings, source
        self.processed = 0

    async def handle_DATA(self, server, session, envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        rcpts = tuple(envelope.rcpt_tos)
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(None, ingest_message, self.engine, self.settings, raw, self.source,
                                                rcpts)
        except Exception as exc:  # noqa: BLE001 - the sending MTA keeps it and retries: nothing is lost
            log.warning("bounce from %s not recorded, asked to retry: %s", envelope.mail_from, exc)
            reply = "451 4.3.0 could not record the message now; try again later"
        else:
            self.processed += 1
            log.info("bounce via %s: %s", self.source, result.line())
            reply = "250 2.0.0 recorded"
        # LMTP answers DATA once per recipient (RFC 2033); SMTP once
        return "\r\n".join([reply] * len(rcpts)) if self.source == "lmtp" and rcpts else reply


def controller(engine, settings, host: str, port: int, lmtp: bool = False):
    """An aiosmtpd Controller (``start()``/``stop()``) serving the handler over SMTP or LMTP."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.lmtp import LMTP

    handler = BounceHandler(engine, settings, "lmtp" if lmtp else "smtp")

    class _Controller(Controller):
        def factory(self):
            if lmtp:
                return LMTP(self.handler, data_size_limit=MAX_MESSAGE, hostname=host)
            return super().factory()

    return _Controller(handler, hostname=host, port=port, data_size_limit=MAX_MESSAGE, ready_timeout=10)


# -- IMAP ------------------------------------------------------------------------------------

@dataclass
class PollResult:
    processed: int = 0
    failed: int = 0
    lines: list[str] = field(default_factory=list)


def _imap(settings) -> imaplib.IMAP4:
    host, port, security = settings.bounce_imap_host, int(settings.bounce_imap_port), settings.bounce_imap_security
    if security not in ("tls", "starttls", "none"):
        raise BounceError(f"bounce_imap_security must be tls, starttls or none, not {security!r}")
    try:
        if security == "tls":
            conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(host, port, ssl_context=ssl.create_default_context(), timeout=30)
        else:
            conn = imaplib.IMAP4(host, port, timeout=30)
            if security == "starttls":
                conn.starttls(ssl.create_default_context())
        user, password = settings.bounce_imap_username, settings.bounce_imap_password
        if "AUTH=PLAIN" in conn.capabilities:  # SASL PLAIN is UTF-8 (RFC 4616): any password works
            conn.authenticate("PLAIN", lambda _: b"\0" + user.encode("utf-8") + b"\0" + password.encode("utf-8"))
        else:
            conn.login(user, password)
        return conn
    except (OSError, imaplib.IMAP4.error, UnicodeEncodeError) as exc:
        raise BounceError(f"cannot log in to IMAP {host}:{port} as {settings.bounce_imap_username!r}: "
                              f"{exc}") from None


def poll_imap(engine, settings) -> PollResult:
    """Process every message in ``bounce_imap_folder``; each one committed is deleted from it."""
    if not settings.bounce_imap_host:
        raise BounceError("bounce_imap_host is not set: there is no mailbox to poll")
    result = PollResult()
    conn = _imap(settings)
    try:
        status, _ = conn.select(_quote(settings.bounce_imap_folder))
        if status != "OK":
            raise BounceError(f"IMAP folder {settings.bounce_imap_folder!r} cannot be opened")
        status, data = conn.uid("SEARCH", None, "ALL")
        uids = (data[0] or b"").split() if status == "OK" else []
        for uid in uids:
            status, parts = conn.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next((p[1] for p in parts or [] if isinstance(p, tuple) and len(p) > 1), None)
            if status != "OK" or raw is None:
                result.failed += 1
                continue
            try:
                outcome = ingest_message(engine, settings, raw, "imap")
            except Exception as exc:  # noqa: BLE001 - left in the mailbox for the next poll
                result.failed += 1
                result.lines.append(f"IMAP message {uid.decode()}: not recorded ({exc}); left in the mailbox")
                continue
            conn.uid("STORE", uid, "+FLAGS", "(\\Deleted)")
            result.processed += 1
            result.lines.append(f"IMAP message {uid.decode()}: {outcome.line()}")
        conn.expunge()
    finally:
        try:
            conn.logout()
        except (OSError, imaplib.IMAP4.error):
            pass
    return result


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'
