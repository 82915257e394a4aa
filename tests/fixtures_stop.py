"""Helpers for the stop, takeover and status tests: a counting aiosmtpd relay that
takes its time per message (so a send lasts long enough to be stopped, stalled or
looked at), and `newsletter` processes sharing one fake timeline."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from conftest import free_port

SECRET = "stop-test-secret-0123456789-abcdef"


@dataclass
class CountingRelay:
    """Every message accepted, counted per recipient; ``delay`` seconds before each 250."""

    port: int
    delay: float = 0.0
    accepted: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> int:
        with self.lock:
            return len(self.accepted)

    def by_recipient(self) -> Counter:
        with self.lock:
            return Counter(self.accepted)

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"relay has {self.count()} message(s), expected {count}")
            time.sleep(0.02)


def start_relay(delay: float = 0.0):
    """(controller, relay): stop the controller when done."""
    from aiosmtpd.controller import Controller

    relay = CountingRelay(free_port(), delay)

    class Handler:
        async def handle_DATA(self, _server, _session, envelope):
            if relay.delay:
                await asyncio.sleep(relay.delay)
            with relay.lock:
                relay.accepted.extend(envelope.rcpt_tos)
            return "250 2.0.0 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=relay.port)
    controller.start()
    return controller, relay


class Processes:
    """`newsletter` commands and daemons on one fake timeline (fake = start + real elapsed)."""

    def __init__(self, tmp_path: Path, content_dir: Path, db_url: str, relay_port: int, fake_start: datetime,
                 **extra: str):
        self.tmp_path, self.content_dir = tmp_path, content_dir
        self.fake0, self.real0 = fake_start, time.time()
        self.procs: dict[str, subprocess.Popen] = {}
        base = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "SMTP_")) and k != "DATABASE_URL"}
        self.vars = {**base, "DATABASE_URL": db_url, "NEWSLETTER_SECRET": SECRET, "NEWSLETTER_TRANSPORT": "smtp",
                     "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(relay_port), "NEWSLETTER_SMTP_CONNECTIONS": "1",
                     "NEWSLETTER_DELIVERY_BATCH_SIZE": "10", "NEWSLETTER_PUBLIC_DIR": str(tmp_path / "public"),
                     "NEWSLETTER_VAR_DIR": str(tmp_path / "var"), "NEWSLETTER_RECONCILE_SECONDS": "1",
                     "NEWSLETTER_SMTP_TIMEOUT": "10", "PYTHONUNBUFFERED": "1", **extra}

    def fake_now(self) -> datetime:
        return self.fake0 + timedelta(seconds=time.time() - self.real0)

    def env(self, **more: str) -> dict[str, str]:
        return {**self.vars, "NEWSLETTER_FAKE_NOW": self.fake_now().isoformat(), **more}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "pipeline.cli", "--content", str(self.content_dir), *args]

    def run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), env=self.env(), cwd=self.tmp_path, capture_output=True, text=True,
                              timeout=timeout)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.tmp_path / f"{name}.log", "w")
        proc = subprocess.Popen(self.argv(*args), env=self.env(), cwd=self.tmp_path, stdout=log,
                                stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text()

    def logs(self) -> str:
        return "\n".join(f"----- {name}\n{self.log(name)[-4000:]}" for name in self.procs)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def eventually(check, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.05)
