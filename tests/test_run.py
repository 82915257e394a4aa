"""`newsletter run` as real processes: the daemon (APScheduler with its job store in
the database, the reconcile job, uvicorn), an aiosmtpd relay on loopback, and
editors' commands from other processes.  Each process's clock starts from
NEWSLETTER_FAKE_NOW chosen so that all of them agree (fake = FAKE0 + real elapsed),
and the send time is a few seconds ahead of it: no test waits for real hours."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy
from lxml import etree

from conftest import free_port
from pipeline.scheduling import calendar

UTC = timezone.utc
SECRET = "test-secret-not-for-production-0123456789"
pytestmark = pytest.mark.slow


class Clock:
    """One fake timeline for every process of a test."""

    def __init__(self, fake_start: datetime):
        self.fake0 = fake_start
        self.real0 = time.time()

    def fake_now(self) -> datetime:
        return self.fake0 + timedelta(seconds=time.time() - self.real0)

    def real_at(self, fake: datetime) -> float:
        return self.real0 + (fake - self.fake0).total_seconds()


class Env:
    def __init__(self, tmp_path: Path, content_dir: Path, db_url: str, smtp_port: int, clock: Clock, **extra: str):
        self.tmp_path, self.content_dir, self.db_url, self.clock = tmp_path, content_dir, db_url, clock
        self.procs: list[subprocess.Popen] = []
        base = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_") and k != "DATABASE_URL"}
        self.vars = {
            **base,
            "DATABASE_URL": db_url,
            "NEWSLETTER_SECRET": SECRET,
            "NEWSLETTER_TRANSPORT": "smtp",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp_port),
            "NEWSLETTER_SMTP_CONNECTIONS": "1",
            "NEWSLETTER_PUBLIC_DIR": str(tmp_path / "public"),
            "NEWSLETTER_VAR_DIR": str(tmp_path / "var"),
            "NEWSLETTER_RECONCILE_SECONDS": "1",
            "NEWSLETTER_LEASE_SECONDS": "10",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }

    def _env(self) -> dict[str, str]:
        return {**self.vars, "NEWSLETTER_FAKE_NOW": self.clock.fake_now().isoformat()}

    def command(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "--content", str(self.content_dir), *args],
                              env=self._env(), cwd=self.tmp_path, capture_output=True, text=True, timeout=60)

    def daemon(self, *args: str, name: str = "daemon") -> subprocess.Popen:
        log = open(self.tmp_path / f"{name}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "--content", str(self.content_dir), "run", *args],
                                env=self._env(), cwd=self.tmp_path, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def log(self, name: str = "daemon") -> str:
        return (self.tmp_path / f"{name}.log").read_text()

    def wait_for_heartbeats(self, engine, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                seen = conn.exec_driver_sql("SELECT count(*) FROM heartbeats").scalar()
            if seen >= count:
                return
            for proc in self.procs:
                assert proc.poll() is None, f"daemon exited early:\n{self.log()}"
            time.sleep(0.1)
        raise AssertionError(f"{count} daemon(s) did not start:\n{self.log()}")

    def stop(self) -> list[int]:
        codes = []
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=20))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return codes


@pytest.fixture
def setup(tmp_path, content_dir, db_url, smtp_server):
    from pipeline.database import open_database
    from pipeline.settings import load_settings
    from subscribers import store

    engine = open_database(db_url)
    settings = load_settings(content_dir, env={}).replace(secret_key=SECRET, database_url=db_url)
    store.add(engine, settings, "reader@example.com", confirmed=True, consent="I agree (test).")
    made: list[Env] = []

    def make(fake_start: datetime, **extra: str) -> Env:
        env = Env(tmp_path, content_dir, db_url, smtp_server.port, Clock(fake_start), **extra)
        made.append(env)
        return env

    yield engine, make
    for env in made:
        env.stop()


def arrivals(server) -> list[float]:
    with server.lock:
        return list(server.arrived)


@pytest.fixture
def smtp_server(smtp_server):
    """The shared relay, also noting when (real time) each message arrived."""
    smtp_server.arrived = []
    original = smtp_server.received

    class Stamping(list):
        def append(self, item):
            smtp_server.arrived.append(time.time())
            super().append(item)

    smtp_server.received = Stamping(original)
    return smtp_server


def finished_run(engine, day: date, kind: str = "daily", timeout: float = 20.0):
    """The day's run once the daemon has recorded its outcome: the relay has the
    message a moment before the daemon writes the ledger and the run, longer on a
    busy machine."""
    deadline = time.monotonic() + timeout
    while True:
        run = calendar.get_run(engine, day, kind)
        if (run is not None and run.state != "running") or time.monotonic() > deadline:
            return run
        time.sleep(0.1)


def settle(seconds: float) -> None:
    """Give every daemon a few reconcile rounds (1 s each) to do something it should not."""
    time.sleep(seconds)


# Tuesday 16 June 2026, British Summer Time (UTC+1): not the weekly day
TUESDAY = date(2026, 6, 16)


def bst(hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(2026, 6, 16, hour - 1, minute, second, tzinfo=UTC)


def test_run_sends_once_at_the_send_time_serves_the_web_and_updates_the_feeds(setup, smtp_server, tmp_path):
    engine, make = setup
    calendar.add_entry(engine, "microneedling", TUESDAY, None)
    env = make(bst(6, 59, 48), NEWSLETTER_SEND_TIME="07:00")
    port = free_port()
    env.daemon("--host", "127.0.0.1", "--port", str(port))
    env.wait_for_heartbeats(engine, 1)
    feed = tmp_path / "public" / "feed.xml"
    assert not feed.exists()

    smtp_server.wait_for(1, timeout=45)
    due = env.clock.real_at(bst(7, 0))
    assert arrivals(smtp_server)[0] >= due - 1.5, "sent before the send time"
    assert arrivals(smtp_server)[0] <= due + 10
    message = smtp_server.received[0].message
    assert smtp_server.received[0].rcpt_tos == ["reader@example.com"]
    assert message["Subject"] == "What Is Microneedling?"

    run = finished_run(engine, TUESDAY)
    assert run.state == "sent" and run.sent == 1 and run.planned_at == bst(7, 0)
    items = etree.parse(str(feed)).getroot().findall("./channel/item")
    assert [i.findtext("title") for i in items] == ["What Is Microneedling?"]
    assert (tmp_path / "public" / "issues" / "2026-06-16" / "index.html").exists()

    # the web service runs in the same process, under base_url's path, and serves the fresh feed
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/newsletter/healthz", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/newsletter/feed.xml", timeout=5) as response:
        assert b"What Is Microneedling?" in response.read()
    # each daemon plans in memory: no scheduler table is shared in the database
    with engine.connect() as conn:
        assert "apscheduler_jobs" not in sqlalchemy.inspect(conn).get_table_names()

    settle(4)
    assert len(smtp_server.received) == 1
    assert env.stop() == [0]
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM heartbeats").scalar() == 0


def test_a_reschedule_from_another_process_takes_effect_without_restart(setup, smtp_server):
    engine, make = setup
    env = make(bst(10, 59, 40))  # the 07:00 send of the day has passed with nothing scheduled
    env.daemon("--no-web")
    env.wait_for_heartbeats(engine, 1)
    assert finished_run(engine, TUESDAY).state == "nothing-to-send"

    added = env.command("schedule", "add", "microneedling", "--on", "2026-06-17", "--at", "11:00")
    assert added.returncode == 0, added.stderr
    moved = env.command("schedule", "move", "microneedling", "--to", "2026-06-16")
    assert moved.returncode == 0, moved.stderr
    assert "moved microneedling to 2026-06-16 at 11:00" in moved.stdout
    listing = env.command("schedule", "list")
    assert "11:00 BST" in next(line for line in listing.stdout.splitlines() if "2026-06-16" in line)

    smtp_server.wait_for(1, timeout=45)
    due = env.clock.real_at(bst(11, 0))
    assert due - 1.5 <= arrivals(smtp_server)[0] <= due + 10
    settle(3)
    assert len(smtp_server.received) == 1
    run = finished_run(engine, TUESDAY)
    assert run.state == "sent" and run.planned_at == bst(11, 0) and run.issue_key == "2026-06-16"
    status = env.command("status")
    assert status.returncode == 0, status.stderr
    assert "daemon: running" in status.stdout
    assert env.stop() == [0]


def test_two_daemons_on_one_database_send_once(setup, smtp_server):
    engine, make = setup
    calendar.add_entry(engine, "microneedling", TUESDAY, None)
    env = make(bst(6, 59, 50))
    env.daemon("--no-web", name="first")
    env.daemon("--no-web", name="second")
    env.wait_for_heartbeats(engine, 2)
    status = env.command("status")
    assert status.stdout.count("daemon: running") == 2, status.stdout

    smtp_server.wait_for(1, timeout=45)
    assert finished_run(engine, TUESDAY).state == "sent"
    settle(5)
    assert len(smtp_server.received) == 1
    with engine.connect() as conn:
        runs = conn.exec_driver_sql("SELECT day, kind, state, holder FROM runs WHERE state = 'sent'").all()
        deliveries = conn.exec_driver_sql("SELECT count(*) FROM deliveries WHERE state = 'sent'").scalar()
    assert len(runs) == 1 and deliveries == 1
    logs = env.log("first") + env.log("second")
    assert logs.count("daily issue 2026-06-16 (microneedling): sent 1") == 1
    assert env.stop() == [0, 0], env.log("first")[-3000:] + "\n-----\n" + env.log("second")[-3000:]
