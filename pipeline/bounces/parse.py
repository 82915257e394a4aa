"""Read one notification that came back by mail: what it says, about which row.

``parse(settings, raw, envelope_to)`` gives a ``Report``: its kind and one
``Finding`` per recipient it reports on, plus the VERP id that names our row. In order:

1. **ARF** (RFC 5965): a ``multipart/report; report-type=feedback-report`` with a
   ``message/feedback-report`` part.  ``Feedback-Type: abuse`` (or ``fraud``,
   ``virus``) is a complaint; ``not-spam`` is recorded and ignored.
2. **DSN** (RFC 3464): a ``message/delivery-status`` part; each per-recipient block
   gives ``Action``, ``Status`` and ``Diagnostic-Code``.  ``failed`` is classified by
   ``pipeline.mail.failures.classify_failure`` (hard, soft or policy); ``delayed`` is
   a warning, recorded and ignored; ``delivered``/``relayed``/``expanded`` are notices.
3. **A bounce without a DSN part** (old Exim, qmail, odd gateways): when the message
   plainly is one (``X-Failed-Recipients``, a MAILER-DAEMON or postmaster sender, a
   "Mail delivery failed"-style subject), flufl.bounce's detectors (GNU Mailman's)
   name the failed recipients, and the text near each address is classified.
4. **Auto-replies** (RFC 3834 ``Auto-Submitted``, ``X-Autoreply``, ``X-Autorespond``,
   ``Precedence: auto_reply``, "Out of office"/"Automatic reply"-style subjects):
   recorded and ignored, never counted as a bounce.
5. Anything else is ``unparsed``: kept and counted, never guessed at.

The VERP id is looked for in the envelope recipients the receiver was given, then
in the headers a delivering MTA writes (``Delivered-To``, ``X-Original-To``,
``Envelope-To``, ``To``), then anywhere in the message (an attached original's
``Return-Path``).  It is signed, so finding it anywhere is safe.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message
from email.parser import HeaderParser

from pipeline.mail import verp
from pipeline.mail.failures import classify_failure, enhanced_status

_BOUNCE_FROM = re.compile(r"mailer-daemon|postmaster|mail delivery (?:subsystem|system)|microsoftexchange",
                          re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(r"undeliver|delivery status notification|delivery (?:has )?failed|failure notice|"
                             r"mail delivery failed|returned mail|delivery failure|could not be delivered",
                             re.IGNORECASE)
_AUTO_SUBJECT = re.compile(r"^\s*(?:auto(?:matic)?[ -]?(?:reply|response|antwort)|auto:|out of (?:the )?office|"
                           r"away from (?:the )?office|on vacation|vacation reply|abwesenheit|absence|"
                           r"r[ée]ponse automatique|respuesta autom[aá]tica|i am (?:currently )?(?:away|out))",
                           re.IGNORECASE)
_COMPLAINT_TYPES = ("abuse", "fraud", "virus")


@dataclass(frozen=True)
class Finding:
    kind: str  # hard, soft, policy, delayed, notice, complaint, not-spam
    email: str | None
    status: str = ""
    diagnostic: str = ""


@dataclass(frozen=True)
class Report:
    kind: str  # arf, dsn, bounce, autoreply, unparsed
    findings: tuple[Finding, ...] = field(default=())
    verp: verp.VerpId | None = None
    note: str = ""


def parse(settings, raw: bytes, envelope_to: tuple[str, ...] = ()) -> Report:
    try:
        msg = message_from_bytes(raw, policy=policy.compat32)
    except Exception as exc:  # noqa: BLE001 - the email package rarely raises; anything it does is "unparsed"
        return Report("unparsed", note=f"not a message: {type(exc).__name__}")
    found = _verp(settings, msg, raw, envelope_to)
    for reader in (_arf, _dsn, _plain_bounce):
        report = reader(msg)
        if report is not None:
            return Report(report.kind, report.findings, found, report.note)
    if _is_autoreply(msg):
        return Report("autoreply", verp=found, note=_header(msg, "Subject")[:200])
    return Report("unparsed", verp=found, note="neither a delivery status notification, a feedback report nor an "
                                               "auto-reply")


# -- the VERP id --------------------------------------------------------------------------

def _verp(settings, msg: Message, raw: bytes, envelope_to: tuple[str, ...]) -> verp.VerpId | None:
    places = list(envelope_to) + [_header(msg, h) for h in ("Delivered-To", "X-Original-To", "Envelope-To", "To")]
    for place in places:
        found = verp.find(settings, place)
        if found is not None:
            return found
    return verp.find(settings, raw.decode("latin-1"))


# -- ARF ---------------------------------------------------------------------------------------

def _arf(msg: Message) -> Report | None:
    part = _part(msg, "message/feedback-report")
    if part is None:
        return None
    fields = _fields(part)
    feedback = (fields.get("feedback-type") or "").strip().lower()
    rcpt = _address(fields.get("original-rcpt-to") or "") or _original_header(msg, "To")
    if feedback in _COMPLAINT_TYPES:
        return Report("arf", (Finding("complaint", rcpt, "", f"feedback-type {feedback}"),))
    if feedback == "not-spam":
        return Report("arf", (Finding("not-spam", rcpt, "", "feedback-type not-spam"),))
    return Report("arf", (), note=f"feedback type {feedback or 'missing'} is not acted on")


def _fields(part: Message) -> dict[str, str]:
    """The fields of a report part, whatever the email package made of it."""
    payload = part.get_payload()
    if isinstance(payload, list):  # parsed as one or more header blocks
        text = "\n\n".join(p.as_string() if isinstance(p, Message) else str(p) for p in payload)
    else:
        data = part.get_payload(decode=True) or b""
        text = data.decode("utf-8", "replace")
    fields: dict[str, str] = {}
    for block in re.split(r"\r?\n\r?\n", text):
        for name, value in HeaderParser().parsestr(block.strip() + "\n").items():
            fields.setdefault(name.lower(), " ".join(value.split()))
    return fields


def _original_header(msg: Message, name: str) -> str | None:
    for ctype in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers"):
        part = _part(msg, ctype)
        if part is None:
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return _address(_header(payload[0], name))
        text = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
        return _address(HeaderParser().parsestr(text).get(name, ""))
    return None


# -- DSN -----------------------------------------------------------------------------------------

def _dsn(msg: Message) -> Report | None:
    part = _part(msg, "message/delivery-status")
    if part is None:
        return None
    payload = part.get_payload()
    blocks = [b for b in payload if isinstance(b, Message)] if isinstance(payload, list) else []
    if not blocks:  # some gateways send it base64 or as one text blob
        text = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
        blocks = [HeaderParser().parsestr(b.strip() + "\n") for b in re.split(r"\r?\n\s*\r?\n", text) if b.strip()]
    findings = []
    for block in blocks:
        rcpt = _address(block.get("Final-Recipient", "") or block.get("Original-Recipient", ""))
        action = (block.get("Action") or "").strip().lower()
        if not action:
            continue  # the per-message block
        status = enhanced_status(block.get("Status") or "")
        diagnostic = " ".join(str(block.get("Diagnostic-Code") or "").split())
        diagnostic = re.sub(r"^(?:smtp|x-[\w-]+);\s*", "", diagnostic, flags=re.IGNORECASE)
        if action == "failed":
            code = _code(diagnostic)
            findings.append(Finding(classify_failure(status, diagnostic, code), rcpt, status, diagnostic[:1000]))
        elif action == "delayed":
            findings.append(Finding("delayed", rcpt, status, diagnostic[:1000]))
        else:
            findings.append(Finding("notice", rcpt, status, f"action {action}"))
    if not findings:
        return Report("dsn", (), note="a delivery status part without a per-recipient block")
    return Report("dsn", tuple(findings))


# -- bounces without a DSN part --------------------------------------------------------------------

def _plain_bounce(msg: Message) -> Report | None:
    if not (msg.get("X-Failed-Recipients") or _BOUNCE_FROM.search(_header(msg, "From"))
            or _BOUNCE_SUBJECT.search(_header(msg, "Subject"))):
        return None
    from flufl.bounce import all_failures

    try:
        temporary, permanent = all_failures(msg)
    except Exception as exc:  # noqa: BLE001 - a detector tripping over odd input: keep the message, say so
        return Report("unparsed", note=f"bounce detectors failed: {type(exc).__name__}")
    body = _text(msg)
    findings = []
    for address, permanent_failure in [(a, False) for a in sorted(temporary)] + [(a, True) for a in sorted(permanent)]:
        email = address.decode("ascii", "replace") if isinstance(address, bytes) else str(address)
        near = _near(body, email)
        if permanent_failure:
            findings.append(Finding(classify_failure("", near, _code(near) or 550), email, enhanced_status(near),
                                    near[:1000]))
        else:
            findings.append(Finding("soft", email, enhanced_status(near), near[:1000]))
    if not findings:
        return Report("unparsed", note="looks like a bounce, but no failed recipient could be read from it")
    return Report("bounce", tuple(findings))


def _near(body: str, email: str) -> str:
    """The lines after the failed address in a human-readable bounce: its diagnostic."""
    body = body.replace("\r\n", "\n")
    index = body.lower().find(email.lower())
    if index < 0:
        return " ".join(body.split())[:500]
    chunk = body[index:index + 600]
    end = chunk.find("\n\n")  # the address's paragraph: its host and the remote server's words
    return " ".join((chunk[:end] if end > 0 else chunk).split())


# -- auto-replies -------------------------------------------------------------------------------------

def _is_autoreply(msg: Message) -> bool:
    auto = _header(msg, "Auto-Submitted").strip().lower()
    if auto and auto != "no":
        return True
    if msg.get("X-Autoreply") or msg.get("X-Autorespond") or msg.get("X-Autoresponder"):
        return True
    if _header(msg, "Precedence").strip().lower() in ("auto_reply", "bulk", "junk"):
        return True
    return bool(_AUTO_SUBJECT.search(_header(msg, "Subject")))


# -- helpers ----------------------------------------------------------------------------------------------

def _part(msg: Message, ctype: str) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() == ctype:
            return part
    return None


def _header(msg: Message, name: str) -> str:
    """A header as text: encoded words decoded, raw UTF-8 (RFC 6532) read as UTF-8."""
    from email.header import decode_header

    value = msg.get(name)
    if value is None:
        return ""
    try:
        chunks = decode_header(value)
    except Exception:  # noqa: BLE001 - a broken encoded word: the raw text will do
        return str(value)
    out = []
    for data, charset in chunks:
        if isinstance(data, bytes):
            try:
                out.append(data.decode(charset if charset and charset != "unknown-8bit" else "utf-8", "replace"))
            except LookupError:
                out.append(data.decode("utf-8", "replace"))
        else:
            out.append(data)
    return "".join(out)


def _address(value: str) -> str | None:
    value = (value or "").strip()
    if ";" in value:  # rfc822; user@example.org
        value = value.split(";", 1)[1]
    match = re.search(r"<?([^\s<>;\"]+@[^\s<>;\"]+)>?", value)
    return match.group(1).rstrip(".") if match else None


def _code(text: str) -> int | None:
    match = re.match(r"\s*([245]\d\d)[\s-]", text or "")
    return int(match.group(1)) if match else None


def _text(msg: Message) -> str:
    chunks = []
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            data = part.get_payload(decode=True) or b""
            chunks.append(data.decode(part.get_content_charset() or "utf-8", "replace"))
    return "\n".join(chunks)
