"""Shared fixtures: real parts only (a copy of content/, a SQLite file, an aiosmtpd
server on loopback, headless Chromium).  Area-specific fixtures live in their own
test modules or in tests/fixtures_<area>.py."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTENT = Path(__file__).parent / "fixtures" / "library"  # the tests' own library, never the live content/
SEED = ROOT.parent / "shared" / "seeds" / "microneedling-guide.txt"
GOLDEN = Path(__file__).parent / "golden"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def content_dir(tmp_path: Path) -> Path:
    """A private copy of the fixture library (tests/fixtures/library), safe to edit."""
    target = tmp_path / "content"
    shutil.copytree(CONTENT, target)
    return target


@pytest.fixture
def settings(content_dir: Path):
    from pipeline.settings import load_settings
    return load_settings(content_dir, env={})


@pytest.fixture
def library(content_dir: Path):
    from pipeline.content.library import load_library
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


@contextmanager
def serve(app, port: int | None = None) -> Iterator[str]:
    """Run ``app`` under a real uvicorn server on 127.0.0.1 (a free port unless given);
    yield its base URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def missing(reason: str) -> None:
    """A test prerequisite is missing: skip locally, but fail under CI (CI=true),
    where make test has installed everything and a skip would hide a test."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run this test, but {reason}", pytrace=False)
    pytest.skip(reason)


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


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Playwright (executablePath), shared by a module.

    Not by the whole session: Playwright's sync API keeps an event loop running in
    the main thread while it is open, which code under test must not have to meet."""
    if not Path(CHROMIUM).exists():
        missing("chromium is not installed (make test installs it as root)")
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


# -- PostgreSQL ----------------------------------------------------------------------
# A real PostgreSQL server for the session: initdb + pg_ctl in a temporary folder on
# a free loopback port.  PostgreSQL refuses to run as root, so under root the server
# runs as "nobody" and owns its folder.  Tests get a fresh database each
# (``postgres_database``) or run on both engines (``store_url``).

def _postgres_bin(name: str) -> str | None:
    import glob

    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return candidates[-1] if candidates else None


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str = "postgres"
    _count: int = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        import psycopg

        self._count += 1
        name = f"{prefix}_{self._count}"
        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server():
    """A running PostgreSQL server on 127.0.0.1 (skipped if the binaries are missing)."""
    import os
    import subprocess
    import tempfile

    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        missing("PostgreSQL binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing("psycopg is not installed (pip install -e '.[test]')")
    as_user: dict = {}
    folder = Path(tempfile.mkdtemp(prefix="newsletter-pg-"))  # not under pytest's root-only tmp folders
    if os.geteuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody")
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        as_user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    data, log = folder / "data", folder / "server.log"
    env = {**os.environ, "LC_ALL": "C", "HOME": str(folder)}
    server = PostgresServer("127.0.0.1", free_port())

    def run(*args: str) -> None:
        done = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=120, **as_user)
        if done.returncode != 0:
            extra = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed:\n{done.stdout}\n{done.stderr}\n{extra}")

    try:
        run(initdb, "-D", str(data), "-U", server.user, "--auth=trust", "-E", "UTF8", "--no-locale")
        options = f"-h {server.host} -p {server.port} -k {folder} -c fsync=off -c full_page_writes=off"
        run(pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    try:
        yield server
    finally:
        from pipeline.database import dispose_all

        dispose_all()  # close pooled connections before the server goes away
        subprocess.run([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], cwd=folder, env=env,
                       capture_output=True, timeout=60, **as_user)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_database(postgres_server) -> str:
    """The URL of a fresh, empty PostgreSQL database."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request, tmp_path: Path) -> str:
    """A fresh database URL, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'newsletter.db'}"
    return request.getfixturevalue("postgres_server").create_database()
