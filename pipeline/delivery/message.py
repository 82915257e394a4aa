"""The email message: a rendered issue as MIME bytes for one recipient.

Two builders that give the same message:

- ``build_message`` is the reference: a full ``EmailMessage`` (policy SMTP) per
  call.  Clear, and slow (about a millisecond per 30 KB message).
- ``MessageTemplate`` builds the issue's bytes once: the header block and the
  quoted-printable parts, cut around the per-recipient values.  ``render`` then
  fills in To, Message-ID, List-Unsubscribe and the token URLs by joining a few
  pre-encoded byte strings with the freshly encoded values.  A test proves both
  give the same structure, headers and decoded bodies.

The quoted-printable pieces come from ``pipeline.delivery.qp``, which also fits the HTML's
lines to 76 characters (``wire_html``) for both builders.

Header safety (checklist point 20): header values that come from content or
subscribers never carry CR or LF.  Subjects are sanitised (control characters
become spaces); a name that breaks the rule of ``pipeline.mail.headers`` is left
out; addresses, URLs and Message-IDs that carry control characters are refused
with ``DeliveryError``, since they can only be an injection attempt.  Non-ASCII
header text is RFC 2047 encoded (``pipeline.mail.headers``).  Before a message
leaves, its bytes are parsed back and must be exactly what we built
(``headers.check_finished``): ``build_message`` checks every message;
``MessageTemplate`` checks its issue-wide bytes once and each To line it inserts
(the only per-recipient header with free text; the other inserted values are
checked against strict patterns).

DKIM (``pipeline.mail.dkim.DkimSigner``) signs each message separately, because the
body differs per recipient (the token URLs); see that module for its cost.
"""
from __future__ import annotations

import re
import secrets
from email import policy as email_policy
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime, formataddr, make_msgid, parseaddr, quote
from html import escape

from pipeline import clock
from pipeline.delivery.qp import normalise_text, qp_static, qp_value, wire_html
from pipeline.errors import DeliveryError
from pipeline.mail.dkim import DKIM_HEADERS, DkimSigner, dkim_key, dkim_signer  # noqa: F401  (re-exported)
from pipeline.mail.dkim_canon import Layout
from pipeline.mail.headers import check_finished, check_mailbox_header, display_name, mailbox, unstructured
from pipeline.rendering.issue import PLACEHOLDERS, Personal, RenderedIssue

POLICY = email_policy.SMTP  # CRLF line ends, 78-column folding, RFC 2047 for non-ASCII
# the body parts' policy: quoted-printable lines of at most 76 characters (RFC 2045), where the
# email package would otherwise write the header limit of 78
BODY_POLICY = POLICY.clone(max_line_length=76)
TEST_PREFIX = "[TEST] "

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
_ADDR_SPEC = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_MESSAGE_ID = re.compile(r"<[^\s<>@\"]+@[A-Za-z0-9.-]+>")
_URL = re.compile(r"https://[^\s<>\"'\\]+")


# -- header values ------------------------------------------------------------

def sanitise_text(value: str, limit: int = 998) -> str:
    """A one-line header value from content or subscriber data: control characters
    (CR and LF included) become single spaces, so they can never start a header."""
    return _CONTROL.sub(" ", value or "").strip()[:limit]


def check_address(address: str, what: str = "address") -> str:
    """``address`` if it is a plain addr-spec; ``DeliveryError`` otherwise (CR/LF
    included: an address is never "cleaned", a mangled address is refused)."""
    if not isinstance(address, str) or not _ADDR_SPEC.fullmatch(address):
        raise DeliveryError(f"refusing {what} {address!r}: not a plain email address "
                            "(control characters, spaces or brackets could inject headers)")
    return address


def recipient(email: str, name: str | None = None) -> str:
    """The To value for a subscriber: the checked address and the sanitised name,
    quoted as needed (``"Jo \\"Q\\" Smith" <jo@example.com>``).  Both builders
    turn it into a header with ``to_header_value``."""
    check_address(email, "recipient address")
    clean = display_name(name)
    return f'"{quote(clean)}" <{email}>' if clean else email


def _check_to(to: str) -> tuple[str, str]:
    """(display name, addr-spec) of a To value; refuses CR/LF and bad addresses."""
    if not isinstance(to, str) or _CONTROL.search(to):
        raise DeliveryError(f"refusing To {to!r}: control characters in an address could inject headers")
    name, addr = parseaddr(to)
    check_address(addr, "recipient address")
    if to.strip() != addr and not to.rstrip().endswith(f"<{addr}>"):  # parseaddr forgives too much
        raise DeliveryError(f"refusing To {to!r}: not 'address' or 'Name <address>'")
    return display_name(name), addr


def to_header_value(name: str, addr: str) -> str:
    """The To header value (``headers.mailbox``): folded, non-ASCII encoded."""
    return mailbox(display_name(name), addr)[0]


def _check_url(url: str, what: str) -> str:
    if not isinstance(url, str) or not _URL.fullmatch(url):
        raise DeliveryError(f"refusing {what} {url!r}: not a plain https URL")
    return url


def _check_message_id(message_id: str) -> str:
    if not isinstance(message_id, str) or not _MESSAGE_ID.fullmatch(message_id):
        raise DeliveryError(f"refusing Message-ID {message_id!r}: expected <local@domain>")
    return message_id


def list_id(settings) -> str:
    value = sanitise_text(settings.list_id or f"daily.{settings.sender_domain}", 255)
    if "<" in value:
        return value
    return f"{display_name(sanitise_text(settings.publication_name, 200))} <{value}>".lstrip()


def unsubscribe_mailto(settings) -> str:
    address = settings.unsubscribe_mailto or f"unsubscribe@{settings.sender_domain}"
    address = address.removeprefix("mailto:").partition("?")[0]
    check_address(address, "unsubscribe_mailto")
    return f"mailto:{address}?subject=unsubscribe"


def list_unsubscribe(settings, unsubscribe_url: str) -> str:
    _check_url(unsubscribe_url, "unsubscribe URL")
    return f"<{unsubscribe_url}>, <{unsubscribe_mailto(settings)}>"


def new_message_id(settings) -> str:
    return make_msgid(domain=settings.sender_domain)


def subject_of(rendered: RenderedIssue, test: bool = False) -> str:
    subject = sanitise_text(rendered.subject, 900)
    if not subject:
        raise DeliveryError(f"issue {rendered.issue.key} has an empty subject")
    return TEST_PREFIX + subject if test else subject


def static_headers(rendered: RenderedIssue, settings, *, test: bool = False, date=None) -> list[tuple[str, str]]:
    """Headers that are the same for every recipient of an issue, in order."""
    sender = check_address(settings.sender_address, "sender_address")
    headers = [
        ("From", formataddr((display_name(sanitise_text(settings.sender_name, 200)), sender), charset="utf-8")),
        ("Subject", subject_of(rendered, test)),
        ("Date", format_datetime(clock.require_aware(date or clock.now()))),
        ("MIME-Version", "1.0"),
        ("List-Id", list_id(settings)),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ]
    if settings.reply_to:
        headers.append(("Reply-To", check_address(settings.reply_to, "reply_to")))
    if settings.feedback_id:
        # Feedback-ID names the campaign, never the recipient (no per-recipient values)
        headers.append(("Feedback-ID", sanitise_text(settings.feedback_id, 200)))
    return headers


def _sender(settings) -> tuple[str, str, str]:
    """(From value, the name it shows, the address)."""
    address = check_address(settings.sender_address, "sender_address")
    value, shown = mailbox(display_name(sanitise_text(settings.sender_name, 200)), address, "From")
    return value, shown, address


def _header_line(settings, header: str, value: str) -> str:
    """One static header as ASCII ``Header: value`` CRLF (``pipeline.mail.headers``)."""
    if header == "From":
        return "From: " + _sender(settings)[0] + "\r\n"
    if header == "List-Id" and not value.isascii() and value.endswith(">"):
        phrase, _, ident = value.rpartition("<")  # the id stays plain: list tools match on it
        return unstructured(header, phrase.strip())[:-2] + "\r\n <" + ident + "\r\n"
    if not value.isascii() or "=?" in value or len(header) + 2 + len(value) > 78:
        return unstructured(header, value)  # Subject, List-Id, Feedback-ID: encoded words as needed
    return f"{header}: {value}\r\n"


def expected_headers(settings, headers: list[tuple[str, str]], to: tuple[str, str], message_id: str,
                     unsubscribe_url: str) -> dict:
    """What an issue message must read back as (``headers.check_finished``)."""
    expected: dict = {name: value for name, value in headers}
    expected["From"] = _sender(settings)[1:]
    expected["To"] = to
    expected["Date"] = None  # the email package re-renders dates; its presence is what counts
    expected["Message-ID"] = message_id
    expected["List-Unsubscribe"] = list_unsubscribe(settings, unsubscribe_url)
    return expected


def _bodies(rendered: RenderedIssue, personal: Personal) -> tuple[str, str]:
    """(text, html) for one recipient; values are HTML-escaped in the HTML."""
    values = _personal_values(personal)
    text, html = rendered.text, wire_html(rendered.html)
    for key, placeholder in PLACEHOLDERS.items():
        text = text.replace(placeholder, values[key])
        html = html.replace(placeholder, escape(values[key], quote=True))
    return text, html


def _personal_values(personal: Personal) -> dict[str, str]:
    return {
        "unsubscribe_url": _check_url(personal.unsubscribe_url, "unsubscribe URL"),
        "preferences_url": _check_url(personal.preferences_url, "preferences URL"),
        "greeting": sanitise_text(personal.greeting, 200),
    }


# -- the reference builder ------------------------------------------------------

def build_message(rendered: RenderedIssue, settings, *, to: str, personal: Personal,
                  message_id: str | None = None, test: bool = False) -> bytes:
    """One complete message as bytes (CRLF): the MIME structure built with the email package,
    header values written by ``pipeline.mail.headers``, and the result checked before it is returned."""
    name, addr = _check_to(to)
    message_id = _check_message_id(message_id) if message_id else new_message_id(settings)
    msg = EmailMessage(policy=POLICY)
    headers = static_headers(rendered, settings, test=test)

    def put(header: str, value: str) -> None:
        # written by pipeline.mail.headers and kept as is: the email package's folder leaves a
        # stray space in long encoded subjects and drops the quotes of some names
        msg.set_raw(header, _header_line(settings, header, value)[len(header) + 2:-2])

    put(*headers[0])  # From
    msg.set_raw("To", to_header_value(name, addr))
    for header, value in headers[1:3]:  # Subject, Date
        put(header, value)
    msg["Message-ID"] = message_id
    for header, value in headers[3:5]:  # MIME-Version, List-Id
        put(header, value)
    msg["List-Unsubscribe"] = list_unsubscribe(settings, personal.unsubscribe_url)
    for header, value in headers[5:]:
        put(header, value)
    text, html = _bodies(rendered, personal)
    msg.make_alternative()
    for body, subtype in ((text, "plain"), (html, "html")):  # text first, HTML last (checklist 16)
        part = MIMEPart(policy=BODY_POLICY)
        part.set_content(body, subtype=subtype, charset="utf-8", cte="quoted-printable")
        msg.attach(part)
    data = msg.as_bytes(policy=POLICY)
    shown = mailbox(name, addr)[1]
    check_finished(data, expected_headers(settings, headers, (shown, addr), message_id, personal.unsubscribe_url),
                   "issue message to " + addr)
    return data


# -- the fast builder ---------------------------------------------------------------

_SPLIT = re.compile("(" + "|".join(re.escape(p) for p in PLACEHOLDERS.values()) + ")")
_KEY_OF = {placeholder: key for key, placeholder in PLACEHOLDERS.items()}


def _split_body(body: str, *, html: bool) -> list:
    """Encoded static bytes, and (value key, html?) slots between them."""
    out: list = []
    for i, chunk in enumerate(_SPLIT.split(body)):
        if i % 2:
            out.append((_KEY_OF[chunk], html))
        elif chunk:
            out.append(qp_static(chunk))
    return out


class MessageTemplate:
    """An issue's message bytes, built once, personalised per recipient cheaply.

    ``render`` gives the same message as ``build_message`` with the same
    arguments, except for the MIME boundary (random per template) and exact header
    folding; the Date is the template's creation time.
    """

    def __init__(self, rendered: RenderedIssue, settings, *, test: bool = False, date=None):
        self.settings = settings
        self.rendered = rendered
        self.boundary = "=_" + secrets.token_hex(16)  # "=_" cannot occur in quoted-printable text
        self._static = static_headers(rendered, settings, test=test, date=date)
        head = "".join(_header_line(settings, name, value) for name, value in self._static)
        head += f'Content-Type: multipart/alternative; boundary="{self.boundary}"\r\n'
        self._head = head.encode("ascii")
        self._mailto = unsubscribe_mailto(settings).encode("ascii")
        part_head = "--{b}\r\nContent-Type: text/{t}; charset=\"utf-8\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        body: list = [b"\r\n", part_head.format(b=self.boundary, t="plain").encode("ascii")]
        body += _split_body(normalise_text(rendered.text), html=False)
        body.append(b"\r\n" + part_head.format(b=self.boundary, t="html").encode("ascii"))
        body += _split_body(normalise_text(wire_html(rendered.html)), html=True)
        body.append(f"\r\n--{self.boundary}--\r\n".encode("ascii"))
        # merge neighbouring static bytes so render joins as few pieces as possible; each distinct
        # (value key, html?) slot becomes the index of its value in the tuple ``parts`` gives
        merged: list = []
        self._slots: list[tuple[str, bool]] = []
        for piece in body:
            if isinstance(piece, bytes):
                if merged and isinstance(merged[-1], bytes):
                    merged[-1] += piece
                else:
                    merged.append(piece)
            else:
                if piece not in self._slots:
                    self._slots.append(piece)
                merged.append(self._slots.index(piece))
        merged[0] = merged[0].removeprefix(b"\r\n")  # the blank line after the headers: Layout.message writes it
        # the issue's bytes as the DKIM signer sees them; Layout.message is the one join of a message
        self.layout = Layout(self.boundary, self._head, tuple(merged))
        self.size = len(self._head) + 2 + sum(len(p) for p in merged if isinstance(p, bytes))
        # the issue-wide bytes, checked once: a sample with a name in To, parsed back whole
        sample_to, sample_id = ("Sample Reader", "sample@example.com"), f"<sample@{settings.sender_domain}>"
        sample_url = f"https://{settings.sender_domain}/unsubscribe/sample"
        sample = self._render(self._to_line_for(*sample_to), Personal(sample_url, sample_url, "Hello,"), sample_id)
        check_finished(sample, expected_headers(settings, self._static, sample_to, sample_id, sample_url),
                       f"issue {rendered.issue.key} message")

    def _to_line_for(self, name: str, addr: str) -> bytes:
        """The To line for a display name (already ``display_name``) and a checked
        address, parsed back as a receiver reads it before it is used."""
        if not name:  # the common case: a bare addr-spec, which _ADDR_SPEC allows no break in
            return b"To: " + addr.encode("ascii") + b"\r\n"
        value, shown = mailbox(name, addr)
        line = b"To: " + value.encode("ascii") + b"\r\n"
        check_mailbox_header(line, "To", shown, addr, "message to " + addr)
        return line

    def _to_line(self, to: str) -> bytes:
        if _ADDR_SPEC.fullmatch(to):  # the common case: no display name
            return b"To: " + to.encode("ascii") + b"\r\n"
        name, addr = _check_to(to)
        return self._to_line_for(name, addr)

    def render(self, *, to: str, personal: Personal, message_id: str) -> bytes:
        """The message for one recipient (CRLF, no line needing dot-stuffing)."""
        if "\r" in to or "\n" in to:
            raise DeliveryError(f"refusing To {to!r}: control characters in an address could inject headers")
        return self._render(self._to_line(to), personal, message_id)

    def render_to(self, email: str, name: str | None, *, personal: Personal, message_id: str) -> bytes:
        """``render`` for a subscriber's address and name, without formatting and
        re-parsing a To string (the send loop's path)."""
        return self.layout.message(*self.parts_to(email, name, personal=personal, message_id=message_id))

    def parts_to(self, email: str, name: str | None, *, personal: Personal,
                 message_id: str) -> tuple[bytes, tuple[bytes, ...]]:
        """The recipient's own parts of ``render_to``'s message: (header lines, body values), which
        ``self.layout.message`` joins into it, and which are all a DKIM signer needs besides the layout."""
        check_address(email, "recipient address")
        return self._parts(self._to_line_for(display_name(name), email), personal, message_id)

    def _render(self, to_line: bytes, personal: Personal, message_id: str) -> bytes:
        return self.layout.message(*self._parts(to_line, personal, message_id))

    def _parts(self, to_line: bytes, personal: Personal, message_id: str) -> tuple[bytes, tuple[bytes, ...]]:
        _check_message_id(message_id)
        values = _personal_values(personal)
        head = b"".join((to_line, b"Message-ID: ", message_id.encode("ascii"), b"\r\nList-Unsubscribe: <",
                         values["unsubscribe_url"].encode("ascii"), b">,\r\n <", self._mailto, b">\r\n"))
        return head, tuple(qp_value(escape(values[key], quote=True) if html else values[key])
                           for key, html in self._slots)
