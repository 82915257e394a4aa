"""Transports: how a finished message leaves the pipeline.

Two kinds, chosen by the ``transport`` setting:

- ``outbox``: a Maildir folder (``outbox_dir``), one ``.eml`` file per message.
  The embedded default, so the demo works with no mail server.
- ``smtp``: an SMTP relay (``smtp_host``, ``smtp_port``, ``smtp_security``,
  ``smtp_username`` and ``SMTP_PASSWORD`` from the environment).

``send_single`` is for one-off mail (confirmation, welcome, test sends).  Bulk
sending of an issue goes through ``pipeline.deliver``, which keeps a pool of
persistent connections and a ledger.
"""
from __future__ import annotations

import mailbox
import os
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from pipeline.errors import DeliveryError
from pipeline.settings import Settings


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    rcpt_to: str


class Outbox:
    """A Maildir: writes are atomic (tmp/ then new/), so a reader never sees half a message."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._maildir = mailbox.Maildir(self.folder, create=True)

    def send(self, data: bytes, envelope: Envelope) -> str:
        # Maildir keys are unique per delivery; the envelope recipient is already in To.
        key = self._maildir.add(data)
        return f"outbox:{key}"

    def messages(self) -> list[bytes]:
        return [self._maildir.get_bytes(key) for key in sorted(self._maildir.keys())]

    def close(self) -> None:
        self._maildir.close()


def smtp_connect(settings: Settings, timeout: float | None = None) -> smtplib.SMTP:
    """An authenticated smtplib connection as the settings describe."""
    timeout = timeout or settings.smtp_timeout
    security = settings.smtp_security
    if security not in ("none", "starttls", "tls"):
        raise DeliveryError(f"smtp_security must be none, starttls or tls, got {security!r}")
    try:
        if security == "tls":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(settings.smtp_host, settings.smtp_port, timeout=timeout,
                                                  context=ssl.create_default_context())
        else:
            conn = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout)
            if security == "starttls":
                conn.starttls(context=ssl.create_default_context())
        if settings.smtp_username:
            conn.login(settings.smtp_username, settings.smtp_password or os.environ.get("SMTP_PASSWORD", ""))
        return conn
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"cannot connect to SMTP relay {settings.smtp_host}:{settings.smtp_port}: {exc}") from exc


def send_single(settings: Settings, message: EmailMessage) -> str:
    """Send one message through the configured transport; returns a receipt string."""
    to = message["To"]
    if not to:
        raise DeliveryError("message has no To header")
    envelope = Envelope(mail_from=settings.sender_address, rcpt_to=message["To"].addresses[0].addr_spec
                        if hasattr(message["To"], "addresses") else str(to))
    data = message.as_bytes()
    if settings.transport == "outbox":
        return Outbox(settings.outbox_dir).send(data, envelope)
    if settings.transport == "smtp":
        conn = smtp_connect(settings)
        try:
            conn.sendmail(envelope.mail_from, [envelope.rcpt_to], data)
        except smtplib.SMTPException as exc:
            raise DeliveryError(f"SMTP relay refused the message to {envelope.rcpt_to}: {exc}") from exc
        finally:
            try:
                conn.quit()
            except smtplib.SMTPException:
                pass
        return f"smtp:{settings.smtp_host}:{settings.smtp_port}"
    raise DeliveryError(f"unknown transport {settings.transport!r} (outbox or smtp)")
