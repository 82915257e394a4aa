"""Transports: how a finished message leaves the pipeline.

Two kinds, chosen by the ``transport`` setting:

- ``outbox``: a Maildir folder (``outbox_dir``), one ``.eml`` file per message.
  The embedded default, so the demo works with no mail server.
- ``smtp``: an SMTP relay (``smtp_host``, ``smtp_port``, ``smtp_security``,
  ``smtp_username`` and ``SMTP_PASSWORD`` from the environment).

``send_single`` is for one-off mail (confirmation, welcome, test sends).  Bulk
sending of an issue goes through ``pipeline.delivery.deliver``, which keeps a pool of
persistent connections and a ledger.
"""
from __future__ import annotations

import asyncio
import base64
import mailbox
import os
import socket
import smtplib
import ssl
from collections import deque
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Awaitable, Callable, NamedTuple

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
        # Maildir(create=True) makes tmp/ new/ cur/ only when it creates the folder
        # itself, so an existing (or just made) empty folder needs them made here.
        for sub in ("tmp", "new", "cur"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
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
                                                  context=tls_context(settings))
        else:
            conn = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout)
            if security == "starttls":
                conn.starttls(context=tls_context(settings))
        if settings.smtp_username:
            conn.login(settings.smtp_username, settings.smtp_password or os.environ.get("SMTP_PASSWORD", ""))
        return conn
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"cannot connect to SMTP relay {settings.smtp_host}:{settings.smtp_port}: {exc}") from exc


def send_single(settings: Settings, message: EmailMessage, mail_from: str | None = None) -> str:
    """Send one message through the configured transport; returns a receipt string.
    ``mail_from`` is the envelope sender (a VERP return path), else ``sender_address``."""
    to = message["To"]
    if not to:
        raise DeliveryError("message has no To header")
    envelope = Envelope(mail_from=mail_from or settings.sender_address, rcpt_to=message["To"].addresses[0].addr_spec
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


# -- bulk SMTP: a lean asyncio client ---------------------------------------------
#
# pipeline.delivery.deliver keeps a pool of these.  It is a small SMTP client on an
# asyncio Protocol rather than aiosmtplib because per message it does only what a
# bulk send needs: with PIPELINING, one write carries the previous message's
# content and this message's MAIL, RCPT and DATA, and one read collects their
# replies, so each message costs one round trip (bench/README.md has the figures).
# Message bytes from pipeline.delivery.message never have a line starting with "." (the
# quoted-printable encoder writes =2E), so dot-stuffing is skipped unless needed.


class Reply(NamedTuple):
    code: int
    text: str

    @property
    def enhanced(self) -> str:
        """The enhanced status code (``5.1.1``) of the reply, or ''."""
        words = self.text[4:].split(None, 1)
        first = words[0] if words else ""
        parts = first.split(".")
        return first if len(parts) == 3 and all(p.isdigit() for p in parts) else ""

    def __str__(self) -> str:
        return f"{self.code} {self.text[4:].strip()}" if self.text else str(self.code)


class ConnectionLost(DeliveryError):
    """The relay closed the connection or stopped answering."""


class GreetingRefused(ConnectionLost):
    """The relay answered the connection with a 4xx greeting (421: too many connections);
    ``reply`` holds its words.  A pool treats it as "one connection fewer"."""

    def __init__(self, message: str, reply: "Reply"):
        super().__init__(message)
        self.reply = reply


class Halt(Exception):
    """Raised by a ``send_batch`` hook to end the batch before the next message is handed
    over (a stop request, a lost lease): messages not handed over are ``unsent``."""


class _ReplyReader(asyncio.Protocol):
    """Collects complete (possibly multi-line) replies and wakes whoever waits."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._buffer = b""
        self._lines: list[bytes] = []
        self.replies: deque[Reply] = deque()
        self._waiter: asyncio.Future | None = None
        self._drain: asyncio.Future | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end + 1]
            start = end + 1
            if len(line) > 4 and line[3] == 45:  # "250-..." continues
                self._lines.append(line)
                continue
            if self._lines:
                self._lines.append(line)
                line = b"".join(self._lines)
                self._lines = []
            code = int(line[:3]) if line[:3].isdigit() else 0
            self.replies.append(Reply(code, line.decode("utf-8", "replace").rstrip("\r\n")))
        self._buffer = buffer[start:]
        if len(self._buffer) > 65536:
            self.transport.abort()  # not SMTP: never buffer without bound
        waiter = self._waiter
        if waiter is not None and self.replies and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc) -> None:
        self.lost = exc or ConnectionResetError("the relay closed the connection")
        for waiter in (self._waiter, self._drain):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def pause_writing(self) -> None:
        self._drain = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    async def drain(self) -> None:
        if self._drain is not None:
            await self._drain

    async def reply(self, timeout: float) -> Reply:
        if self.replies:
            return self.replies.popleft()
        if self.lost is not None:
            raise ConnectionLost(f"connection lost: {self.lost}")
        waiter = self._waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self.replies:
            return self.replies.popleft()
        raise ConnectionLost(f"connection lost: {self.lost}")


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no reply from the relay in time"))


def tls_context(settings: Settings) -> ssl.SSLContext:
    cafile = getattr(settings, "smtp_ca_file", "") or None
    return ssl.create_default_context(cafile=cafile)


class Outcome(NamedTuple):
    """What happened to one message of a batch.

    ``stage`` is where it ended: ``sent``; ``mail``, ``rcpt``, ``data`` (the DATA
    command) or ``end`` (the reply to the end of data) for a refusal; ``lost``
    when the connection dropped or timed out before the message's content went
    out (certainly not delivered); ``unknown`` when that happened after its
    content went out and before the reply (the relay may have it: uncertain);
    ``unsent`` when it never started (an earlier failure closed the connection,
    or a hook halted the batch).
    """

    stage: str
    reply: Reply | None = None
    error: str = ""

    @property
    def detail(self) -> str:
        return str(self.reply) if self.reply is not None else self.error


class SMTPConnection:
    """One persistent, optionally TLS and authenticated, connection to the relay."""

    def __init__(self, settings: Settings, protocol: _ReplyReader, timeout: float):
        self.settings = settings
        self.protocol = protocol
        self.timeout = timeout
        self.extensions: dict[str, str] = {}
        self.sent = 0  # messages accepted on this connection (for the per-connection cap)
        self.usable = True  # False once a batch ended in a lost connection or a timeout

    @classmethod
    async def open(cls, settings: Settings, deadline: float | None = None) -> "SMTPConnection":
        """Connect, read the greeting, EHLO, STARTTLS and AUTH as configured.  Connecting
        and the greeting wait at most ``smtp_connect_timeout`` (and never past
        ``deadline``, a loop time); a 4xx greeting raises ``GreetingRefused``."""
        security = settings.smtp_security
        if security not in ("none", "starttls", "tls"):
            raise DeliveryError(f"smtp_security must be none, starttls or tls, got {security!r}")
        loop = asyncio.get_running_loop()
        timeout = float(settings.smtp_timeout)
        # connecting and the greeting have their own (shorter) limit: a dead relay must say so soon
        connect_timeout = float(getattr(settings, "smtp_connect_timeout", timeout) or timeout)
        if deadline is not None:
            connect_timeout = max(0.05, min(connect_timeout, deadline - loop.time()))
        where = f"{settings.smtp_host}:{settings.smtp_port}"
        protocol = None
        try:
            _, protocol = await asyncio.wait_for(loop.create_connection(
                lambda: _ReplyReader(loop), settings.smtp_host, int(settings.smtp_port),
                ssl=tls_context(settings) if security == "tls" else None), connect_timeout)
            conn = cls(settings, protocol, timeout)
            greeting = await protocol.reply(max(0.05, connect_timeout))
            if 400 <= greeting.code < 500:
                conn.abort()
                raise GreetingRefused(f"relay {where} refused the connection: {greeting}", greeting)
            if greeting.code != 220:
                conn.abort()
                raise DeliveryError(f"SMTP greeting refused: {greeting}")
            await conn._ehlo()
            if security == "starttls":
                if "starttls" not in conn.extensions:
                    raise DeliveryError(f"relay {where} does not offer STARTTLS")
                await conn._expect(b"STARTTLS\r\n", 220, "STARTTLS")
                transport = await loop.start_tls(protocol.transport, protocol, tls_context(settings),
                                                 server_hostname=settings.smtp_host)
                protocol.transport = transport
                await conn._ehlo()
            if settings.smtp_username:
                await conn._login(settings.smtp_username, settings.smtp_password or os.environ.get("SMTP_PASSWORD", ""))
            return conn
        except GreetingRefused:
            raise
        except (OSError, TimeoutError, ssl.SSLError, ConnectionLost) as exc:
            if protocol is not None and protocol.transport is not None:
                protocol.transport.abort()
            if isinstance(exc, TimeoutError):
                what = "no greeting" if protocol is not None else "no answer to the connection"
                exc = f"{what} within {connect_timeout:g} s"
            raise ConnectionLost(f"cannot connect to SMTP relay {where}: {exc}") from None

    def _write(self, data: bytes) -> None:
        if self.protocol.lost is not None:
            raise ConnectionLost(f"connection lost: {self.protocol.lost}")
        self.protocol.transport.write(data)

    async def _expect(self, command: bytes | None, code: int, what: str) -> Reply:
        if command:
            self._write(command)
        reply = await self.protocol.reply(self.timeout)
        if reply.code != code:
            raise DeliveryError(f"SMTP {what} refused: {reply}")
        return reply

    async def _ehlo(self) -> None:
        reply = await self._expect(b"EHLO " + _helo_name().encode("ascii") + b"\r\n", 250, "EHLO")
        self.extensions = {}
        for line in reply.text.splitlines()[1:]:
            keyword, _, params = line[4:].strip().partition(" ")
            self.extensions[keyword.lower()] = params

    async def _login(self, username: str, password: str) -> None:
        mechanisms = self.extensions.get("auth", "").upper().split()
        if "PLAIN" in mechanisms:
            token = base64.b64encode(f"\0{username}\0{password}".encode("utf-8"))
            await self._expect(b"AUTH PLAIN " + token + b"\r\n", 235, "AUTH")
        elif "LOGIN" in mechanisms:
            await self._expect(b"AUTH LOGIN\r\n", 334, "AUTH")
            await self._expect(base64.b64encode(username.encode("utf-8")) + b"\r\n", 334, "AUTH")
            await self._expect(base64.b64encode(password.encode("utf-8")) + b"\r\n", 235, "AUTH")
        else:
            raise DeliveryError(f"relay offers no AUTH mechanism we support (PLAIN, LOGIN): {mechanisms or 'none'}")

    @property
    def pipelining(self) -> bool:
        return "pipelining" in self.extensions

    async def send_batch(self, mail_from: str, messages: list[tuple[str, bytes]] | list[tuple[str, bytes, str]],
                         before_each: Callable[[], Awaitable[None]] | None = None,
                          dot_safe: bool | str = False,
                          handover: Callable[[int, list[tuple[int, Outcome]]], Awaitable[None]] | None = None,
                          ) -> list[Outcome]:
        """Send ``(recipient, data)`` pairs; one Outcome per message, in order.  A
        ``(recipient, data, envelope sender)`` triple has its own MAIL FROM (VERP).

        ``dot_safe`` says the data has CRLF line ends and no line starting with
        "." (what ``MessageTemplate`` writes), which spares a scan of every message:
        searching 60 KB for a line-initial dot costs more than the rest of the
        per-message work.  ``dot_safe="ended"`` says the data also ends with the
        end of DATA (``.`` CRLF), so it goes out as it is, without another copy.

        A refused message does not stop the batch.  A lost connection or a
        timeout ends it: the message under way is ``unknown`` if its content went
        out, else ``lost``; later ones are ``unsent``; and the connection must not
        be used again (``usable`` is False).  ``before_each`` may raise ``Halt`` to
        end the batch before the next message starts.

        ``handover(index, finished)`` is awaited right before message ``index``'s
        content is written, with the (index, Outcome) pairs that ended since the
        last call: the caller records those and marks ``index`` in flight, so at
        most one message per connection is ever handed over without its outcome
        recorded.  If it raises, the message is not handed over.
        """
        outcomes: list[Outcome | None] = [None] * len(messages)
        under_way: list[int] = []  # indexes whose transaction has begun and has no outcome yet
        handed: set[int] = set()  # of those, the ones whose content went out
        finished: list[tuple[int, Outcome]] = []  # outcomes not yet passed to handover

        async def hand(index: int) -> None:
            if handover is not None:
                done = finished[:]
                finished.clear()
                await handover(index, done)
            handed.add(index)

        def ended(index: int, outcome: Outcome) -> None:
            outcomes[index] = outcome
            finished.append((index, outcome))

        envelope = b"MAIL FROM:<" + mail_from.encode("ascii") + b">\r\nRCPT TO:<"
        pending: tuple[int, bytes] | None = None  # (index, content) waiting to be written after its 354
        needs_reset = False
        reply = self.protocol.reply
        timeout = self.timeout
        try:
            for index, message in enumerate(messages):
                rcpt, data = message[0], message[1]
                this_envelope = envelope if len(message) < 3 else (  # type: ignore[misc]
                    b"MAIL FROM:<" + message[2].encode("ascii") + b">\r\nRCPT TO:<")  # type: ignore[misc]
                if before_each is not None:
                    await before_each()
                out = []
                if pending is not None:
                    await hand(pending[0])
                    out.append(pending[1])
                if needs_reset:
                    out.append(b"RSET\r\n")
                commands = this_envelope + rcpt.encode("ascii") + b">\r\nDATA\r\n"
                if self.pipelining:
                    out.append(commands)
                    self._write(b"".join(out))
                    under_way.append(index)
                    if pending is not None:
                        self._finish(ended, under_way, pending[0], await reply(timeout))
                        pending = None
                        await self.protocol.drain()
                    if needs_reset:
                        await reply(timeout)
                        needs_reset = False
                    mail = await reply(timeout)
                    rcpt_reply = await reply(timeout)
                    data_reply = await reply(timeout)
                else:
                    if out:
                        self._write(b"".join(out))
                    if pending is not None:
                        self._finish(ended, under_way, pending[0], await reply(timeout))
                        pending = None
                    if needs_reset:
                        await reply(timeout)
                        needs_reset = False
                    under_way.append(index)
                    self._write(this_envelope[:this_envelope.index(b"\r\n") + 2])
                    mail = await reply(timeout)
                    rcpt_reply = data_reply = None
                    if mail.code == 250:
                        self._write(b"RCPT TO:<" + rcpt.encode("ascii") + b">\r\n")
                        rcpt_reply = await reply(timeout)
                        if rcpt_reply.code in (250, 251):
                            self._write(b"DATA\r\n")
                            data_reply = await reply(timeout)
                if data_reply is not None and data_reply.code == 354:
                    pending = (index, data if dot_safe == "ended" else data + b".\r\n" if dot_safe else _content(data))
                    continue
                # refused before the content: say where, and reset the transaction
                if mail.code != 250:
                    ended(index, Outcome("mail", mail))
                elif rcpt_reply is None or rcpt_reply.code not in (250, 251):
                    ended(index, Outcome("rcpt", rcpt_reply))
                else:
                    ended(index, Outcome("data", data_reply))
                under_way.remove(index)
                needs_reset = True
                if 421 in (mail.code, getattr(rcpt_reply, "code", 0), getattr(data_reply, "code", 0)):
                    raise ConnectionLost("the relay is closing the connection (421)")
            if pending is not None:
                await hand(pending[0])
                self._write(pending[1])
                self._finish(ended, under_way, pending[0], await reply(timeout))
                pending = None
            if needs_reset:
                self._write(b"RSET\r\n")
                await reply(timeout)
        except (ConnectionLost, TimeoutError, OSError, Halt) as exc:
            self.usable = False
            self.abort()
            if isinstance(exc, TimeoutError):
                error = f"no reply from the relay within smtp_timeout ({timeout:g} s)"
            else:
                error = str(exc) or type(exc).__name__
            for index in under_way:
                if index in handed:  # its content went out: the relay may have it
                    outcomes[index] = Outcome("unknown", None, error)
                else:
                    outcomes[index] = Outcome("unsent" if isinstance(exc, Halt) else "lost", None, error)
            for index, outcome in enumerate(outcomes):
                if outcome is None:
                    outcomes[index] = Outcome("unsent", None, error)
        return outcomes  # type: ignore[return-value]

    def _finish(self, ended: Callable[[int, Outcome], None], under_way: list[int], index: int, reply: Reply) -> None:
        under_way.remove(index)
        if reply.code == 250:
            ended(index, Outcome("sent", reply))
            self.sent += 1
        else:
            ended(index, Outcome("end", reply))
            if reply.code == 421:
                raise ConnectionLost("the relay is closing the connection (421)")

    async def quit(self) -> None:
        try:
            self._write(b"QUIT\r\n")
            await self.protocol.reply(min(self.timeout, 5.0))
        except (ConnectionLost, TimeoutError, OSError, DeliveryError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.protocol.transport is not None:
            self.protocol.transport.close()

    def abort(self) -> None:
        if self.protocol.transport is not None:
            self.protocol.transport.abort()


def _content(data: bytes) -> bytes:
    """DATA content: CRLF-terminated, dot-stuffed only when a line starts with '.'."""
    if data.startswith(b".") or b"\n." in data:
        data = (b"." + data if data.startswith(b".") else data).replace(b"\n.", b"\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


_helo = None


def _helo_name() -> str:
    global _helo
    if _helo is None:
        name = socket.getfqdn()
        _helo = name if name.isascii() and "." in name and " " not in name else "localhost"
    return _helo
