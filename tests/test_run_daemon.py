"""The daemon's plumbing in process, on SQLite and PostgreSQL: the real APScheduler
with its job store in the database, re-planned from the calendar and the pause by
the reconcile job, and a job store shared by several daemons."""
from __future__ import annotations

import time
from datetime import date, datetime, timedelta, timezone

import pytest
import sqlalchemy

from pipeline.scheduling import calendar
from pipeline.delivery import leases
from pipeline import clock
from pipeline.clock import frozen_clock

UTC = timezone.utc
SECRET = "test-secret-not-for-production-0123456789"


def eventually(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def daemon(store_url, content_dir, tmp_path):
    from pipeline.database import open_database
    from pipeline.scheduling.run_cli import Daemon
    from pipeline.settings import load_settings

    engine = open_database(store_url)
    settings = load_settings(content_dir, env={}).replace(
        database_url=store_url, reconcile_seconds=0.2, secret_key=SECRET, public_dir=str(tmp_path / "public"),
        outbox_dir=str(tmp_path / "outbox"), var_dir=str(tmp_path / "var"))
    with frozen_clock(datetime(2026, 3, 3, 6, 0, tzinfo=UTC)):  # Tuesday, 06:00 GMT
        d = Daemon(engine, settings, content_dir)
        d.reload_settings = lambda: None  # keep the test's settings (site.yaml has no test paths)
        d.start()
        try:
            yield d
        finally:
            d.stop()


def planned(d) -> datetime | None:
    job = d.scheduler.get_job("next-send", jobstore="default")
    if job is None or job.next_run_time is None:
        return None
    # back from the scheduler's real time to the pipeline clock's
    return job.next_run_time + (clock.now() - datetime.now(UTC))


def close(a: datetime | None, b: datetime) -> bool:
    return a is not None and abs((a - b).total_seconds()) < 2


def test_reconcile_replans_from_calendar_and_pause(daemon):
    engine = daemon.engine
    eventually(lambda: leases.daemons(engine, alive_within=timedelta(minutes=1)))
    seven = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
    assert eventually(lambda: close(planned(daemon), seven))
    # in this daemon's own memory: no job store is shared between daemons
    assert type(daemon.scheduler._lookup_jobstore("default")).__name__ == "MemoryJobStore"
    with engine.connect() as conn:
        assert "apscheduler_jobs" not in sqlalchemy.inspect(conn).get_table_names()

    calendar.add_entry(engine, "microneedling", date(2026, 3, 3), "06:30")  # as the CLI would, from outside
    assert eventually(lambda: close(planned(daemon), datetime(2026, 3, 3, 6, 30, tzinfo=UTC)))

    calendar.set_pause(engine, True, date(2026, 3, 5))
    assert eventually(lambda: close(planned(daemon), datetime(2026, 3, 5, 7, 0, tzinfo=UTC)))
    calendar.set_pause(engine, True, None)
    assert eventually(lambda: daemon.scheduler.get_job("next-send", jobstore="default") is None)
    calendar.set_pause(engine, False)
    assert eventually(lambda: close(planned(daemon), datetime(2026, 3, 3, 6, 30, tzinfo=UTC)))
    assert calendar.get_run(engine, date(2026, 3, 3), "daily") is None  # nothing was due yet


def test_stopping_removes_the_heartbeat(daemon):
    engine = daemon.engine
    eventually(lambda: leases.daemons(engine, alive_within=timedelta(minutes=1)))
    daemon.stop()
    assert leases.daemons(engine, alive_within=timedelta(days=1)) == []


def test_each_daemon_plans_in_its_own_memory_from_the_database(store_url, content_dir, tmp_path):
    """Two daemons on one database: each has its own job store, both plan the same
    send from the calendar, and removing one's job does not touch the other's."""
    from pipeline.database import open_database
    from pipeline.scheduling.run_cli import Daemon
    from pipeline.settings import load_settings

    engine = open_database(store_url)
    settings = load_settings(content_dir, env={}).replace(database_url=store_url, reconcile_seconds=0.2,
                                                          secret_key=SECRET)
    with frozen_clock(datetime(2026, 3, 3, 6, 0, tzinfo=UTC)):
        first, second = Daemon(engine, settings, content_dir), Daemon(engine, settings, content_dir)
        for d in (first, second):
            d.reload_settings = lambda: None
            d.start()
        try:
            seven = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
            assert eventually(lambda: close(planned(first), seven) and close(planned(second), seven))
            assert first.scheduler._lookup_jobstore("default") is not second.scheduler._lookup_jobstore("default")
            first.scheduler.remove_job("next-send")
            assert close(planned(second), seven)
            assert eventually(lambda: close(planned(first), seven))  # its reconcile plans it again
        finally:
            first.stop()
            second.stop()


def test_a_broken_site_file_keeps_the_previous_settings(content_dir, db_url, caplog):
    from pipeline.database import open_database
    from pipeline.scheduling.run_cli import Daemon
    from pipeline.settings import load_settings

    settings = load_settings(content_dir, env={}).replace(database_url=db_url)
    d = Daemon(open_database(db_url), settings, content_dir)
    site = content_dir / "site.yaml"
    site.write_text(site.read_text(encoding="utf-8").replace('send_time: "07:00"', 'send_time: "08:15"'),
                    encoding="utf-8")
    d.reload_settings()  # editors may change the send time while the daemon runs
    assert d.settings.send_time == "08:15" and d.settings.database_url == db_url
    site.write_text(site.read_text(encoding="utf-8").replace("timezone: Europe/London", "timezone: Europe/Narnia"),
                    encoding="utf-8")
    d.reload_settings()
    assert d.settings.timezone == "Europe/London"
    assert any("keeping the previous ones" in r.getMessage() and "Narnia" in r.getMessage() for r in caplog.records)
