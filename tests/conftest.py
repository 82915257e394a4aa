"""Shared fixtures: real parts only (a copy of content/, a SQLite file, an aiosmtpd
server on loopback, headless Chromium).  Area-specific fixtures live in their own
test modules or in tests/fixtures_<area>.py."""
from __future__ import annotations

import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTENT = ROOT / "content"
SEED = ROOT.parent / "shared" / "seeds" / "microneedling-guide.txt"
GOLDEN = Path(__file__).parent / "golden"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def content_dir(tmp_path: Path) -> Path:
    """A private copy of the committed content/ folder, safe to edit."""
    target = tmp_path / "content"
    shutil.copytree(CONTENT, target)
    return target


@pytest.fixture
def settings(content_dir: Path):
    from pipeline.settings import load_settings
    return load_settings(content_dir, env={})


@pytest.fixture
def library(content_dir: Path):
    from pipeline.content import load_library
    return load_library(content_dir)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'newsletter.db'}"


@pytest.fixture
def frozen():
    """A frozen clock at 2026-03-02 06:00 UTC; move it with .advance(...) or .set(...)."""
    from pipeline.clock import frozen_clock
    with frozen_clock(datetime(2026, 3, 2, 6, 0, tzinfo=timezone.utc)) as clock:
        yield clock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)


@dataclass
class SMTPServer:
    host: str
    port: int
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        raise AssertionError(f"expected {count} message(s), got {len(self.received)}")


@pytest.fixture
def smtp_server():
    """A real aiosmtpd SMTP server on 127.0.0.1 that keeps every message it accepts."""
    from aiosmtpd.controller import Controller

    server = SMTPServer("127.0.0.1", free_port())

    class Handler:
        async def handle_DATA(self, _server, _session, envelope):
            with server.lock:
                server.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
            return "250 OK"

    controller = Controller(Handler(), hostname=server.host, port=server.port)
    controller.start()
    try:
        yield server
    finally:
        controller.stop()


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (executablePath), shared by the session."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make test installs it as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        try:
            yield b
        finally:
            b.close()
