"""The daemon's plumbing in process, on SQLite and PostgreSQL: the real APScheduler
with its job store in the database, re-planned from the calendar and the pause by
the reconcile job, and a job store shared by several daemons."""
from __future__ import annotations

import time
from datetime import date, datetime, timedelta, timezone

import pytest

from pipeline import calendar, clock
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
    from pipeline.run_cli import Daemon
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
    eventually(lambda: calendar.daemons(engine, alive_within=timedelta(minutes=1)))
    seven = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
    assert eventually(lambda: close(planned(daemon), seven))
    with engine.connect() as conn:  # persisted in the newsletter's own database
        assert conn.exec_driver_sql("SELECT id FROM apscheduler_jobs").scalars().all() == ["next-send"]

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
    eventually(lambda: calendar.daemons(engine, alive_within=timedelta(minutes=1)))
    daemon.stop()
    assert calendar.daemons(engine, alive_within=timedelta(days=1)) == []


def test_shared_job_store_tolerates_another_daemon_removing_the_job(store_url):
    from apscheduler.schedulers.background import BackgroundScheduler

    from pipeline.database import open_database
    from pipeline.run_cli import SharedJobStore

    engine = open_database(store_url)
    ours, theirs = (BackgroundScheduler(jobstores={"default": SharedJobStore(engine=engine)}, timezone=UTC)
                    for _ in range(2))
    ours.start(paused=True)
    theirs.start(paused=True)
    try:
        at = datetime.now(UTC) + timedelta(hours=1)
        job = ours.add_job("pipeline.run_cli:wake_job", "date", run_date=at, id="next-send")
        theirs.remove_job("next-send")  # the other daemon ran it and removed it
        ours.remove_job("next-send")  # APScheduler would raise JobLookupError here
        job._modify(next_run_time=at + timedelta(minutes=5))
        ours._lookup_jobstore("default").update_job(job)  # a missing row on update is put back
        assert theirs.get_job("next-send").next_run_time == at + timedelta(minutes=5)
    finally:
        ours.shutdown(wait=False)
        theirs.shutdown(wait=False)


def test_a_broken_site_file_keeps_the_previous_settings(content_dir, db_url, caplog):
    from pipeline.database import open_database
    from pipeline.run_cli import Daemon
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
