"""A test copy of an issue (``newsletter send-test``): one message to one address.

It goes through the configured transport (outbox or SMTP) with "[TEST]" in the
subject and placeholder links, and never touches the send ledger.
"""
from __future__ import annotations

from pipeline.delivery.deliver import run_coroutine
from pipeline.errors import DeliveryError, NewsletterError
from pipeline.rendering.issue import Personal, RenderedIssue
from pipeline.delivery.message import build_message, check_address, dkim_signer
from pipeline.rendering.greeting import greeting
from pipeline.mail.transport import Envelope, Outbox, SMTPConnection


def send_test(settings, rendered: RenderedIssue, to: str) -> str:
    """One copy to ``to`` with "[TEST]" in the subject, through the configured
    transport; the ledger is never touched.  Returns a receipt."""
    check_address(to, "test recipient")
    placeholder = f"{settings.base_url.rstrip('/')}"
    try:
        data = build_message(rendered, settings, to=to, test=True,
                             personal=Personal(f"{placeholder}/unsubscribe/test", f"{placeholder}/preferences/test",
                                               greeting(None)))
    except NewsletterError:
        raise
    except Exception as exc:  # one line, never a traceback
        raise DeliveryError(f"cannot build the test message of issue {rendered.issue.key}: "
                            f"{type(exc).__name__}: {exc}") from None
    signer = dkim_signer(settings)
    if signer is not None:
        data = signer.sign(data)
    envelope = Envelope(settings.sender_address, to)
    if settings.transport == "outbox":
        outbox = Outbox(settings.outbox_dir)
        try:
            return outbox.send(data, envelope)
        finally:
            outbox.close()
    return run_coroutine(_send_one(settings, envelope, data))


async def _send_one(settings, envelope: Envelope, data: bytes) -> str:
    conn = await SMTPConnection.open(settings)
    try:
        (outcome,) = await conn.send_batch(envelope.mail_from, [(envelope.rcpt_to, data)])
    finally:
        await conn.quit() if conn.usable else conn.abort()
    if outcome.stage != "sent":
        raise DeliveryError(f"the relay did not take the test message to {envelope.rcpt_to}: {outcome.detail}")
    return f"smtp:{settings.smtp_host}:{settings.smtp_port} {outcome.detail}"
