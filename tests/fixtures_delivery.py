"""Helpers for the delivery tests: subscribers in bulk, a small rendered issue,
and an aiosmtpd server whose handler is scripted per recipient."""
from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from email import message_from_bytes, policy
from typing import Callable

from pipeline import clock
from pipeline.rendering.issue import PLACEHOLDERS, Issue, RenderedIssue

P = PLACEHOLDERS


def small_rendered(subject: str = "What Is Microneedling?", on: date = date(2026, 3, 2),
                   audience_topic: str | None = None) -> RenderedIssue:
    """A RenderedIssue with every placeholder, a long line and non-ASCII text."""
    html = ("<!DOCTYPE html>\n<html lang=\"en-GB\" dir=\"ltr\"><head><title>" + subject + "</title></head><body>"
            f"<p>{P['greeting']}</p>\n<p>Collagen induction therapy \u2019s evidence \u2013 a review.</p>\n"
            + "<p>" + "Long line of premailer output. " * 60 + "</p>\n"
            f"<p><a href=\"{P['unsubscribe_url']}\">Unsubscribe</a> | <a href=\"{P['preferences_url']}\">Preferences</a></p>"
            "\n.a line that starts with a dot\n</body></html>")
    text = (f"{P['greeting']}\n\nCollagen induction therapy \u2019s evidence.\n.dot line\n\n"
            f"Unsubscribe: {P['unsubscribe_url']}\nPreferences: {P['preferences_url']}\n")
    issue = Issue(date=on, number=1, articles=(), audience_topic=audience_topic)
    return RenderedIssue(issue=issue, subject=subject, preheader="Preheader", html=html, text=text,
                         web_url=f"https://my.klarity.health/newsletter/issues/{issue.key}/")


def add_subscribers(engine, settings, n: int, *, start: int = 0, status: str = "confirmed", frequency: str = "daily",
                    topics: tuple[str, ...] = (), name: str | None = None, domain: str = "example.com") -> list[int]:
    """``n`` subscribers sub<i>@domain inserted in bulk; returns their ids."""
    from sqlalchemy import insert, select
    from subscribers.models import Subscriber, SubscriberTopic
    from subscribers.tokens import email_hash

    now = clock.now()
    rows = []
    for i in range(start, start + n):
        email = f"sub{i}@{domain}"
        rows.append(dict(email=email, email_key=email, email_hash=email_hash(settings, email), name=name,
                         status=status, frequency=frequency, created_at=now, updated_at=now, pending_at=now,
                         confirmed_at=now if status == "confirmed" else None))
    t = Subscriber.__table__
    with engine.begin() as conn:
        conn.execute(insert(t), rows)
        ids = [r.id for r in conn.execute(select(t.c.id).where(t.c.email_key.in_([r["email_key"] for r in rows])))]
        if topics:
            conn.execute(insert(SubscriberTopic.__table__), [{"subscriber_id": i, "topic": tp} for i in ids for tp in topics])
    return sorted(ids)


@dataclass
class Script:
    """What the scripted server does, keyed by recipient address."""

    temp_fail_once: set[str] = field(default_factory=set)  # 451 at RCPT the first time
    temp_fail: set[str] = field(default_factory=set)  # 451 at RCPT while the address is in the set
    reject: set[str] = field(default_factory=set)  # 550 at RCPT, always
    drop_in_data_once: set[str] = field(default_factory=set)  # close mid-DATA, the first time
    stall_once: set[str] = field(default_factory=set)  # no reply to the end of data, the first time
    stall_seconds: float = 2.0
    late_once: set[str] = field(default_factory=set)  # accept, but only after stall_seconds, the first time
    max_sessions: int = 0  # 421 at the greeting beyond this many connections at once (0: no limit)
    reject_sender: bool = False  # 550 to every MAIL FROM
    pipelining: bool = False  # advertise PIPELINING (aiosmtpd reads commands in order either way)


@dataclass
class ScriptedServer:
    host: str
    port: int
    script: Script
    accepted: list[tuple[str, str]] = field(default_factory=list)  # (rcpt, Message-ID); not the bytes (memory)
    seen: Counter = field(default_factory=Counter)  # RCPT attempts per address
    peers: Counter = field(default_factory=Counter)  # messages accepted per connection (client address)
    active: int = 0  # connections open now
    refused: int = 0  # connections refused with 421 at the greeting
    lock: threading.Lock = field(default_factory=threading.Lock)

    def by_recipient(self) -> Counter:
        with self.lock:
            return Counter(r for r, _ in self.accepted)

    def message_ids(self) -> Counter:
        with self.lock:
            return Counter(m for _, m in self.accepted)


def start_scripted_server(script: Script, port: int):
    """An aiosmtpd Controller on 127.0.0.1:port running ``script``; returns (controller, server)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP

    server = ScriptedServer("127.0.0.1", port, script)
    done: set[tuple[str, str]] = set()  # (kind, address) faults already played

    def once(kind: str, address: str, pool: set[str]) -> bool:
        with server.lock:
            if address in pool and (kind, address) not in done:
                done.add((kind, address))
                return True
        return False

    class Handler:
        async def handle_EHLO(self, _server, session, _envelope, hostname, responses):
            session.host_name = hostname
            if script.pipelining:
                responses.insert(len(responses) - 1, "250-PIPELINING")  # before the final "250 HELP"
            return responses

        async def handle_MAIL(self, _server, _session, envelope, address, _options):
            if script.reject_sender:
                return "550 5.7.1 Sender not allowed"
            envelope.mail_from = address
            return "250 OK"

        async def handle_RCPT(self, _server, _session, envelope, address, _options):
            with server.lock:
                server.seen[address] += 1
            if address in script.reject:
                return "550 5.1.1 No such user here"
            if address in script.temp_fail or once("451", address, script.temp_fail_once):
                return "451 4.7.1 Greylisted, try again later"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, _server, session, envelope):
            rcpt = envelope.rcpt_tos[0]
            if once("stall", rcpt, script.stall_once):
                await asyncio.sleep(script.stall_seconds)
                return "451 4.4.2 Took too long"  # the client gave up already; nothing is kept
            mid = message_from_bytes(envelope.content, policy=policy.default)["Message-ID"]
            with server.lock:
                server.accepted.append((rcpt, str(mid)))
                server.peers[session.peer] += 1
            if once("late", rcpt, script.late_once):
                await asyncio.sleep(script.stall_seconds)  # queued for delivery already; the 250 comes late
            return "250 2.0.0 OK queued"

    class DroppingSMTP(SMTP):
        refusing = False

        def connection_made(self, transport):
            with server.lock:
                server.active += 1
                self.refusing = bool(script.max_sessions) and server.active > script.max_sessions
                server.refused += self.refusing
            if self.refusing:
                transport.write(b"421 4.7.0 Too many connections from your host, try again later\r\n")
                transport.close()
                return
            super().connection_made(transport)

        def connection_lost(self, exc):
            with server.lock:
                server.active -= 1
            if not self.refusing:
                super().connection_lost(exc)

        async def smtp_DATA(self, arg):
            rcpt = self.envelope.rcpt_tos[0] if self.envelope.rcpt_tos else ""
            if once("drop", rcpt, script.drop_in_data_once):
                await self.push("354 End data with <CR><LF>.<CR><LF>")
                await self._reader.readline()  # a line of the content, then hang up
                self.transport.close()
                return
            return await super().smtp_DATA(arg)

    class ScriptedController(Controller):
        def factory(self):
            return DroppingSMTP(self.handler, **self.SMTP_kwargs)

    controller = ScriptedController(Handler(), hostname=server.host, port=port)
    controller.start()
    return controller, server


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")
