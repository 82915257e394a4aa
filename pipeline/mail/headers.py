"""Header values, and the check of a finished message before it leaves.

Three things are decided here, once, for every message we send (issues,
test copies, confirmation and welcome emails):

- **Which names may appear at all** (``name_problem``, ``display_name``).  A
  name is display text typed by a stranger.  The email package decodes RFC 2047
  encoded words when it reads a header, and some CPython releases (3.11.7 and
  3.12.1 among them) then write the decoded CR/LF back out as real line breaks,
  so a name such as ``=?utf-8?b?...?=`` can carry its own headers and body.  We
  do not rely on the interpreter: a name with encoded-word syntax, a control
  character or a line separator is refused where it comes in, and one already
  stored is treated as no name.
- **How a header is written** (``unstructured``, ``mailbox``): ASCII only, folded
  at 78 columns, non-ASCII text as RFC 2047 encoded words (``’ – £ é``, CJK and
  emoji in a subject or a name must never stop a send).
- **Whether the finished bytes are what we built** (``check_finished``): parsed
  back with the email package as a receiver would, the message must have exactly
  the headers we set, each once, and the MIME structure we built
  (multipart/alternative: text/plain then text/html, nothing else).  Anything
  else is refused with ``DeliveryError``.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
from email import policy as email_policy
from email.parser import BytesParser
from email.utils import formataddr
from typing import Mapping

from pipeline.errors import DeliveryError

NAME_MAX = 100  # characters; a display name, not a biography
_ENCODED_WORD = re.compile(r"=\?.*\?=", re.S)
# control characters (Unicode category Cc) but tab, line and paragraph separators, bidi
# overrides and isolates, lone surrogates
_FORBIDDEN = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_PARSER = BytesParser(policy=email_policy.default)
BODY_TYPES = ("text/plain", "text/html")
PART_HEADERS = frozenset({"content-type", "content-transfer-encoding", "mime-version"})


# -- names ----------------------------------------------------------------------------

def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a display name, in plain words; None when it can."""
    if _ENCODED_WORD.search(name):
        return "the name contains \"=?\" and \"?=\", which email programs read as hidden text; type the name as plain text"
    if _FORBIDDEN.search(name):  # a tab is only whitespace (it becomes a space); CR, LF, NUL, U+0085... are not
        return "the name contains a line break or another control character; type it on one line"
    if len(name) > NAME_MAX and len(" ".join(name.split())) > NAME_MAX:
        return f"the name is longer than {NAME_MAX} characters"
    return None


def display_name(name: str | None) -> str:
    """The name as it may appear in a header or a greeting: spaces collapsed, or
    "" when there is none or it breaks the rule (a name stored before the rule)."""
    if not name or name_problem(name) is not None:
        return ""
    return " ".join(name.split())


# -- writing headers --------------------------------------------------------------------

def _encoded_word(text: str) -> str:
    """One RFC 2047 encoded word for ``text`` (UTF-8), Q or B, whichever is shorter."""
    raw = text.encode("utf-8")
    q = "".join(chr(b) if b in _Q_SAFE else "_" if b == 0x20 else f"={b:02X}" for b in raw)
    b = base64.b64encode(raw).decode("ascii")
    return f"=?utf-8?q?{q}?=" if len(q) <= len(b) else f"=?utf-8?b?{b}?="


def unstructured(header: str, value: str) -> str:
    """``Header: value`` CRLF for free text (Subject, Feedback-ID), ASCII and folded.

    ASCII text is folded at spaces.  Other text (and ASCII that a reader would
    take for an encoded word) becomes a run of encoded words, each within 75
    characters and never splitting a character; whitespace between adjacent
    encoded words is dropped when decoding, so the value comes back exactly."""
    prefix = f"{header}: "
    if value.isascii() and "=?" not in value:
        words = value.split(" ")
        lines = [prefix + words[0]]
        for word in words[1:]:
            if word and len(lines[-1]) > len(prefix) and len(lines[-1]) + 1 + len(word) > 78:
                lines.append(" " + word)  # the space becomes the fold: unfolding gives it back
            else:
                lines[-1] += " " + word
        return "\r\n".join(lines) + "\r\n"
    words, chunk, room = [], "", 78 - len(prefix)
    for char in value:
        if chunk and len(_encoded_word(chunk + char)) > min(75, room):
            words.append(_encoded_word(chunk))
            chunk, room = "", 77
        chunk += char
    words.append(_encoded_word(chunk))
    return prefix + "\r\n ".join(words) + "\r\n"


def wire_address(addr: str) -> str:
    """``addr`` as headers and RCPT TO carry it: an internationalised domain in its IDNA (ASCII) form.
    The store keeps addresses that way already; this is the edge's own check, for anything older."""
    if addr.isascii():
        return addr
    local, at, domain = addr.rpartition("@")
    if not at or not local.isascii():
        raise DeliveryError("an address with a non-ASCII local part needs SMTPUTF8, which we do not send")
    import idna

    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except idna.IDNAError:
        raise DeliveryError("an address has a domain that is not a valid internationalised name") from None


def mailbox(name: str, addr: str, header: str = "To") -> tuple[str, str]:
    """(header value, the name it shows) for ``name <addr>``, at most 78 columns a
    line, CRLF-folded.  ``name`` must already be a ``display_name``.

    A non-ASCII name becomes one encoded word, written here rather than by the
    email package, whose folder drops the quotes of a name such as ``Jöhn "Q"``.
    Names too long for one encoded word (or one line) are shortened: several
    encoded words in a row decode with stray spaces in common parsers (Python's
    included), and it is only a display name."""
    addr = wire_address(addr)
    if not name:
        return addr, ""
    if name.isascii():
        room = 78 - len(header) - 2 - len(addr) - 5  # "To: " + quotes + " <addr>"
        if room < 1:
            return addr, ""
        shown = name[:room].rstrip()
        return formataddr((shown, addr)), shown
    while name:
        word = "=?utf-8?b?" + base64.b64encode(name.encode("utf-8")).decode("ascii") + "?="
        if len(word) <= 75:
            break
        name = name[:-1].rstrip()
    else:
        return addr, ""
    fits = len(header) + 2 + len(word) + len(addr) + 3 <= 78
    return (f"{word} <{addr}>" if fits else f"{word}\r\n <{addr}>"), name


# -- Message-IDs ---------------------------------------------------------------------------

class MessageIds:
    """Message-IDs for one issue's ledger rows.

    The same Message-ID every time a row is (re)sent, so a receiver can drop a
    duplicate, and different for every row.  It is opaque: 120 bits of an HMAC
    (keyed with the secret) of the issue and the ledger row, so neither the
    issue date, the row's place in the send order (which follows the
    subscriber ids), the address nor a topic can be read from it.  The ledger
    keeps each row's Message-ID, which is how a reply or a bounce quoting it is
    traced back."""

    def __init__(self, settings, issue):  # a pipeline.delivery.ledger.IssueInfo
        from pipeline.keys import secret
        self.domain = settings.sender_domain
        seed = f"message-id\0{issue.id}\0{issue.created_at.isoformat()}\0".encode("utf-8")
        self._key = hmac.new(secret(settings).encode("utf-8"), seed, hashlib.sha256)

    def __call__(self, delivery_id: int) -> str:
        mac = self._key.copy()
        mac.update(str(delivery_id).encode("ascii"))
        return f"<{base64.b32encode(mac.digest()[:15]).decode('ascii').lower()}@{self.domain}>"


# -- the finished message -----------------------------------------------------------------

def _refuse(what: str, why: str) -> DeliveryError:
    return DeliveryError(f"refusing the {what}: {why} (a header value must have broken out of its line)")


def _same(a: str, b: str) -> bool:
    return " ".join(str(a).split()) == " ".join(str(b).split())


_MAILBOX_LINE = re.compile(
    rb"(?P<header>[A-Za-z-]+): (?:"
    rb"=\?utf-8\?b\?(?P<b64>[A-Za-z0-9+/]+={0,2})\?=(?:\r\n)? "  # one encoded word (maybe folded)
    rb'|"(?P<quoted>(?:[^"\\\x00-\x1f\x7f]|\\[^\x00-\x1f\x7f])*)" '  # a quoted string
    rb"|(?P<atoms>[^\x00-\x20\x7f()<>@,:;.\"\\\[\]](?:[^\x00-\x1f\x7f()<>@,:;.\"\\\[\]]*[^\x00-\x20\x7f()<>@,:;.\"\\\[\]])?) "
    rb")?<(?P<addr>[^<>\x00-\x20\x7f]+)>\r\n")


def check_mailbox_header(line: bytes, header: str, name: str, addr: str, what: str) -> None:
    """The per-recipient check of the fast builder, cheap enough for every message:
    ``line`` must be exactly one ``Header: name <addr>`` line in one of the three
    forms ``mailbox`` writes (an encoded word, a quoted string, plain words), and
    read back, by that strict grammar, as exactly ``name`` and ``addr``, with a
    name that passes the name rule.  Any other byte (a line break that is not a
    fold, a second header, an encoded word inside quotes) fails the match.  The
    email package's parser is far slower (about 0.3 ms a line), so it checks the
    issue-wide bytes once per issue instead (``check_finished``)."""
    found = _MAILBOX_LINE.fullmatch(line)
    if found is None or found["header"] != header.encode("ascii"):
        raise _refuse(what, f"the {header} line is not one {header}: name <address> line")
    try:
        if found["b64"] is not None:
            shown = base64.b64decode(found["b64"], validate=True).decode("utf-8")
        elif found["quoted"] is not None:
            shown = re.sub(r"\\(.)", r"\1", found["quoted"].decode("ascii"))
        else:
            shown = (found["atoms"] or b"").decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise _refuse(what, f"the {header} name does not decode") from None
    if (shown, found["addr"].decode("ascii")) != (name, addr):  # name passed the name rule: so does shown
        raise _refuse(what, f"the {header} header reads back as {(shown, found['addr'])!r}, not {(name, addr)!r}")


def check_finished(data: bytes, expected: Mapping[str, object], what: str = "message") -> None:
    """Refuse ``data`` unless it reads back as exactly what we built.

    ``expected`` maps each header we set to its decoded value: a string, an
    (display name, address) pair for From/To, or None for "present, any value".
    Content-Type is implied.  The body must be multipart/alternative with a
    text/plain part then a text/html part, each a leaf with only its own
    Content-Type and Content-Transfer-Encoding, and nothing before or after."""
    msg = _PARSER.parsebytes(data)
    found = [k.lower() for k in msg.keys()]
    wanted = {k.lower() for k in expected} | {"content-type"}
    repeated = sorted({k for k in found if found.count(k) > 1})
    if repeated:
        raise _refuse(what, f"header {repeated[0]!r} appears {found.count(repeated[0])} times")
    if set(found) != wanted:
        extra, missing = sorted(set(found) - wanted), sorted(wanted - set(found))
        raise _refuse(what, f"unexpected header {extra[0]!r}" if extra else f"header {missing[0]!r} is missing")
    for header, value in expected.items():
        if value is None:
            continue
        if isinstance(value, tuple):
            got = [(a.display_name, a.addr_spec) for a in msg[header].addresses]
            if len(got) != 1 or got[0][1] != value[1] or not _same(got[0][0], value[0]):
                raise _refuse(what, f"{header} reads back as {got!r}, not {value!r}")
        elif not _same(msg[header], value):
            raise _refuse(what, f"{header} reads back as {str(msg[header])!r}, not {value!r}")
    if msg.get_content_type() != "multipart/alternative" or msg.defects:
        raise _refuse(what, f"the message is {msg.get_content_type()}, not multipart/alternative"
                      + (f" ({msg.defects[0].__class__.__name__})" if msg.defects else ""))
    parts = list(msg.iter_parts())
    if tuple(p.get_content_type() for p in parts) != BODY_TYPES:
        raise _refuse(what, "the parts are " + ", ".join(p.get_content_type() for p in parts)
                      + ", not text/plain then text/html")
    for part in parts:
        if part.is_multipart() or part.defects or not {k.lower() for k in part.keys()} <= PART_HEADERS:
            raise _refuse(what, f"the {part.get_content_type()} part has unexpected headers or structure")
    if (msg.preamble or "").strip() or (msg.epilogue or "").strip():
        raise _refuse(what, "there is text outside the MIME parts")
