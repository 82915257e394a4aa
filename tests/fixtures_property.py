"""Helpers for the property test (tests/test_property_sends.py): an aiosmtpd relay on
loopback that records every (recipient, Message-ID) it accepts and can be switched
while a send runs (accept, 451 to some recipients, slow, down), a library of fixture
articles with their own slugs and Unicode titles, and the world one example runs in."""
from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path

from conftest import CONTENT

SECRET = "property-test-secret-0123456789-abcdef"
NAMES = ("Zoë Ångström", "王小明", "José “Pepe” Núñez", "Siobhán O’Neill", "Ελένη Παπαδοπούλου", "Dr. 😀 Emoji",
         "Łukasz Żółć", "Ana Lúcia", "Nguyễn Thị Minh", "Søren Kierkegård", "Анна Каренина", "Zoë “Test” 王")
TITLES = ("Microneedling – the £ question", "Peelings: é, è and ê", "Skin care in 東京 ☂",
          "Sun cream’s evidence – a review", "Retinol 101 🧴", "Acne scars: what works?")


def make_library(target: Path, count: int = len(TITLES)) -> list[str]:
    """A copy of the fixture library plus ``count`` copies of its article, each with its own
    slug and a Unicode title; returns the new slugs (never reads the live content/)."""
    shutil.copytree(CONTENT, target)
    source = (target / "articles" / "microneedling.md").read_text(encoding="utf-8")
    slugs = []
    for n, title in enumerate(TITLES[:count], 1):
        slug = f"prop-article-{n}"
        text = source.replace("slug: microneedling\n", f"slug: {slug}\n", 1)
        text = text.replace("title: What Is Microneedling?", f"title: \"{title}\"", 1)
        (target / "articles" / f"{slug}.md").write_text(text, encoding="utf-8")
        slugs.append(slug)
    return slugs


@dataclass
class SwitchRelay:
    """A real SMTP relay whose behaviour changes at run time.

    ``mode``: ``accept``; ``greylist`` (451 at RCPT for the addresses in ``greylisted``);
    ``slow`` (``delay`` seconds before each 250, so a send can be killed mid-way); ``down``
    (the server is stopped: connections are refused).  A message the client gave up on
    is still kept when the relay finishes it, as a real relay would."""

    port: int
    mode: str = "accept"
    greylisted: frozenset[str] = frozenset()
    delay: float = 0.15
    accepted: list[tuple[str, str]] = field(default_factory=list)  # (recipient, Message-ID)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: object = None

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        relay = self

        class Handler:
            async def handle_RCPT(self, _server, _session, envelope, address, _options):
                if relay.mode == "greylist" and address in relay.greylisted:
                    return "451 4.7.1 Greylisted, try again later"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, _server, _session, envelope):
                if relay.mode == "slow":
                    await asyncio.sleep(relay.delay)
                mid = str(message_from_bytes(envelope.content, policy=policy.default)["Message-ID"])
                with relay.lock:
                    relay.accepted.extend((rcpt, mid) for rcpt in envelope.rcpt_tos)
                return "250 2.0.0 OK queued"

        deadline = time.monotonic() + 10
        while True:
            try:
                controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
                controller.start()
                break
            except Exception:  # the port may linger for a moment after a stop
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._controller = controller

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def switch(self, mode: str, greylisted: frozenset[str] = frozenset()) -> None:
        if mode == "down":
            self.stop()
        elif self._controller is None:
            self.start()
        self.mode, self.greylisted = mode, greylisted

    def count(self) -> int:
        with self.lock:
            return len(self.accepted)

    def received(self) -> Counter:
        """(recipient, Message-ID) -> copies accepted."""
        with self.lock:
            return Counter(self.accepted)

    def reset(self) -> None:
        with self.lock:
            self.accepted.clear()
        self.switch("accept")
