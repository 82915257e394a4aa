"""``newsletter run``: the main job, and ``newsletter run --once``.

One process holds:

- an APScheduler 3 ``BackgroundScheduler`` whose job store is a table
  (``apscheduler_jobs``) in the newsletter's own database, holding the one
  persisted job: ``next-send``, a date job at the next send instant;
- a short-interval ``reconcile`` job (every ``reconcile_seconds``, kept in
  memory) that writes the heartbeat, re-reads site settings, the calendar and the
  pause, does whatever is due (``schedule.wake``: send, record missed or paused
  days) and re-plans ``next-send``;
- the web service (uvicorn), unless ``--no-web``.

Why the reconcile job: APScheduler 3 reads its job store but never notices rows
changed by another process, and the editors' CLI is another process.  So the
CLI writes only the calendar and pause tables; every daemon re-plans from them
within ``reconcile_seconds``, and the ``next-send`` job makes the send itself
punctual.  Several daemons may share the job store table; APScheduler assumes
it is alone there, so ``SharedJobStore`` treats "that job was already run or
replaced by another daemon" as normal.  Which daemon sends is settled by the
send lease and the ``runs`` table, never by the scheduler.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import click
from apscheduler.jobstores.base import BaseJobStore, JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from pipeline import calendar, clock, schedule
from pipeline.calendar import Run
from pipeline.errors import ContentError, ScheduleError
from pipeline.settings import Settings, load_settings

log = logging.getLogger("newsletter.run")

SEND_JOB = "next-send"
RECONCILE_JOB = "reconcile"


class SharedJobStore(SQLAlchemyJobStore):
    """The SQLAlchemy job store, tolerant of other daemons using the same table.

    Another daemon may have run and removed ``next-send`` (a date job) a moment
    before this one does the same, or replaced it; APScheduler 3 would raise
    ``JobLookupError`` inside its main loop and stop scheduling.  Here a missing
    row on update is re-inserted, and a missing row on remove is already gone.
    Its table belongs to the migrations, like every other table.
    """

    def start(self, scheduler, alias):
        # the table is made by migration 0003 (pipeline/database.open_database), so
        # daemons starting together do not race to CREATE it
        BaseJobStore.start(self, scheduler, alias)

    def update_job(self, job):
        try:
            super().update_job(job)
        except JobLookupError:
            try:
                super().add_job(job)
            except Exception:  # inserted by another daemon in between: theirs is as good
                log.debug("job %s re-added by another daemon", job.id)

    def remove_job(self, job_id):
        try:
            super().remove_job(job_id)
        except JobLookupError:
            log.debug("job %s already removed by another daemon", job_id)

    def shutdown(self):
        # the engine is the pipeline's own, shared with the rest of the process:
        # do not dispose of it the way the base class does
        pass


_daemon: "Daemon | None" = None


def wake_job() -> None:
    """Entry point of the persisted ``next-send`` job (a textual reference, so a job
    written by one daemon can be run by another)."""
    if _daemon is not None:
        # a reconcile may be reading the calendar at this very moment: wait for it
        # rather than leave the send to the next reconcile
        _daemon.tick("send time", wait=10.0)


def reconcile_job() -> None:
    if _daemon is not None:
        _daemon.reconcile()


def real_time(instant: datetime) -> datetime:
    """The wall-clock instant at which the pipeline clock shows ``instant``.

    APScheduler sleeps in real time, while ``clock.now()`` may run at an offset
    (``NEWSLETTER_FAKE_NOW`` in tests), so plans are converted before handing over.
    """
    offset = clock.now() - datetime.now(clock.UTC)
    return instant - offset


class Daemon:
    def __init__(self, engine: Engine, settings: Settings, content_dir: Path, holder: str | None = None):
        self.engine = engine
        self.settings = settings
        self.content_dir = Path(content_dir)
        self.holder = holder or calendar.new_holder()
        self.started_at = clock.now()
        self._tick = threading.Lock()
        self._reconciling = threading.Lock()
        self._stopping = threading.Event()
        self.scheduler: BackgroundScheduler | None = None

    # -- jobs ----------------------------------------------------------------------------
    def reload_settings(self) -> None:
        """Editors may change site.yaml (send time, weekly day...) while the daemon runs.
        A broken file keeps the previous settings; the day's run will report it."""
        try:
            fresh = load_settings(self.content_dir)
            schedule.zone(fresh), schedule.parse_hhmm(fresh.send_time, "send_time"), schedule.weekly_weekday(fresh)
        except (ContentError, ScheduleError) as exc:
            log.error("site settings do not load, keeping the previous ones: %s", exc)
            return
        # the database cannot change under a running daemon
        self.settings = fresh.replace(database_url=self.settings.database_url)

    def reconcile(self) -> None:
        with self._reconciling:
            if self._stopping.is_set():
                return
            try:
                calendar.beat(self.engine, self.holder, self.started_at)
                self.reload_settings()
                self.tick("reconcile")
                if not self._stopping.is_set():
                    self.plan()
            except Exception:  # the next reconcile tries again; the daemon must not die of a hiccup
                log.exception("reconcile failed")

    def tick(self, why: str, wait: float = 0.0) -> list[Run]:
        """Do what is due, unless this process is already at it (a send can take hours;
        the heartbeat and planning must go on meanwhile, so reconcile never waits)."""
        if not (self._tick.acquire(timeout=wait) if wait > 0 else self._tick.acquire(blocking=False)):
            return []
        try:
            runs = schedule.wake(self.engine, self.settings, self.content_dir, self.holder)
            for run in runs:
                log.info("%s: %s issue of %s: %s%s", why, run.kind, run.day.isoformat(), run.state,
                         f" ({run.error})" if run.error else "")
            return runs
        except Exception:
            log.exception("wake-up failed (%s)", why)
            return []
        finally:
            self._tick.release()

    def next_instant(self) -> datetime | None:
        settings = self.settings
        now = clock.now()
        start = schedule.local_day(now, schedule.zone(settings))
        custom = schedule.custom_times(self.engine, start, start + timedelta(days=9))
        return schedule.next_instant(now, settings, custom, calendar.get_pause(self.engine))

    def plan(self) -> None:
        """(Re)plan ``next-send`` from the calendar, the pause and the settings."""
        assert self.scheduler is not None
        instant = self.next_instant()
        job = self.scheduler.get_job(SEND_JOB, jobstore="default")
        if instant is None:
            if job is not None:
                self.scheduler.remove_job(SEND_JOB, jobstore="default")
            return
        at = real_time(instant)
        if job is not None and job.next_run_time is not None and abs((job.next_run_time - at).total_seconds()) < 1:
            return
        grace_seconds = int(schedule.grace(self.settings).total_seconds())
        self.scheduler.add_job("pipeline.run_cli:wake_job", "date", run_date=at, id=SEND_JOB, jobstore="default",
                               replace_existing=True, misfire_grace_time=max(grace_seconds, 1), coalesce=True,
                               max_instances=1)
        log.info("next send planned at %s", instant.astimezone(schedule.zone(self.settings)).isoformat())

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        global _daemon
        _daemon = self
        calendar.beat(self.engine, self.holder, self.started_at)
        scheduler = BackgroundScheduler(
            jobstores={"default": SharedJobStore(engine=self.engine), "local": MemoryJobStore()},
            executors={"default": {"type": "threadpool", "max_workers": 4}},
            timezone=clock.UTC,
        )
        self.scheduler = scheduler
        scheduler.start()
        # the missed-send check and first plan happen at once, then every reconcile_seconds
        scheduler.add_job("pipeline.run_cli:reconcile_job", "interval",
                          seconds=float(self.settings.reconcile_seconds), id=RECONCILE_JOB, jobstore="local",
                          next_run_time=datetime.now(clock.UTC), max_instances=1, coalesce=True,
                          misfire_grace_time=None)
        log.info("newsletter run started as %s (send time %s %s, reconcile every %ss)", self.holder,
                 self.settings.send_time, self.settings.timezone, self.settings.reconcile_seconds)

    def stop(self) -> None:
        global _daemon
        # APScheduler's shutdown(wait=True) holds its job-store lock while it waits for
        # running jobs, and a reconcile in plan() needs that lock: let any reconcile
        # finish first, and start no other.  A send in progress is waited for.
        self._stopping.set()
        with self._reconciling:
            pass
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        try:
            calendar.forget(self.engine, self.holder)
        except Exception:
            log.exception("could not remove the heartbeat")
        _daemon = None
        log.info("newsletter run stopped")

    def serve(self, *, web: bool, host: str, port: int, root_path: str | None = None) -> None:
        self.start()
        try:
            if web:
                _serve_web(self.settings, self.engine, host, port, root_path)
            else:
                _wait_for_signal()
        finally:
            self.stop()


def _serve_web(settings: Settings, engine: Engine, host: str, port: int, root_path: str | None = None) -> None:
    import uvicorn

    from pipeline.web.app import create_app, root_path_for

    # uvicorn installs its own SIGINT/SIGTERM handlers while it runs, and re-raises the
    # signal when it is done, to the handler it found: a quiet one here, so that
    # the scheduler is shut down and the heartbeat removed before the process exits
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    # the same uvicorn settings as `newsletter serve`: no Server header, the same root path
    uvicorn.Server(uvicorn.Config(create_app(settings, engine), host=host, port=port, log_level="info",
                                  access_log=False, server_header=False, proxy_headers=True,
                                  root_path=root_path_for(settings, root_path))).run()


def _wait_for_signal() -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


# -- run --once --------------------------------------------------------------------------------

def run_once(engine: Engine, settings: Settings, content_dir: Path, day: date) -> list[Run]:
    """The day's work now, whatever the time: the daily issue, and on the weekly day
    the weekly digest.  A day already sent is not sent again."""
    holder = calendar.new_holder()
    runs = [schedule.run_day(engine, settings, content_dir, day, "daily", force=True, holder=holder)]
    if schedule.is_weekly_day(day, settings):
        runs.append(schedule.run_day(engine, settings, content_dir, day, "weekly", force=True, holder=holder))
    return [run if run.holder == holder else replace(run, error=run.error or "done earlier; not sent again")
            for run in runs]


def describe_run(run: Run) -> str:
    counts = f"sent {run.sent}, deferred {run.deferred}, failed {run.failed}, bounced {run.bounced}"
    head = f"{run.kind} issue of {run.day.isoformat()}: {run.state}"
    if run.state == "sent":
        earlier = f"; {run.error}" if run.error else ""
        return f"{head} (issue {run.issue_key}; {counts}{earlier})"
    return f"{head}" + (f": {run.error}" if run.error else "")


def where_to_look(settings: Settings, runs: list[Run]) -> list[str]:
    public = Path(settings.public_dir)
    lines = []
    if settings.transport == "outbox":
        outbox = Path(settings.outbox_dir)
        mails = sorted((p for sub in ("new", "cur") for p in (outbox / sub).glob("*") if p.is_file()),
                       key=lambda p: p.stat().st_mtime)
        if mails:
            lines.append(f"newest email in the outbox: {mails[-1]}  ({len(mails)} in {outbox})")
        else:
            lines.append(f"outbox: {outbox} (empty)")
    for run in runs:
        if run.issue_key and (public / "issues" / run.issue_key / "index.html").exists():
            lines.append(f"{run.kind} issue page: {public / 'issues' / run.issue_key / 'index.html'}")
    lines.append(f"archive: {public / 'index.html'}")
    feeds = [public / name for name in ("feed.xml", "atom.xml", "feed.json") if (public / name).exists()]
    if feeds:
        lines.append("feeds: " + ", ".join(str(p) for p in feeds))
    return lines


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


@click.command("run")
@click.option("--once", is_flag=True, help="Do the day's work now (compose, publish, send) and exit.")
@click.option("--date", "day", default=None, metavar="YYYY-MM-DD", help="With --once: the day to do (default today).")
@click.option("--no-web", is_flag=True, help="Do not serve the web service in this process.")
@click.option("--host", default=None, help="Web service address (default: the web_host setting).")
@click.option("--port", type=int, default=None, help="Web service port (default: the web_port setting).")
@click.option("--root-path", default=None, metavar="PATH",
              help="base_url's path, when a reverse proxy strips it (default: the web_root_path setting).")
@click.pass_obj
def run(obj, once: bool, day: str | None, no_web: bool, host: str | None, port: int | None,
        root_path: str | None) -> None:
    """Run the newsletter: send each day's issue at the send time, serve the web service.

    With --once, do one day's work now and exit (non-zero if it failed).
    """
    from pipeline.database import open_database

    if day is not None and not once:
        raise ScheduleError("--date only goes with --once")
    settings = obj.settings()
    configure_logging()
    engine = open_database(settings.database_url)
    if once:
        target = schedule.parse_day(day, "--date") if day else schedule.today(settings)
        runs = run_once(engine, settings, obj.content_dir, target)
        for one in runs:
            click.echo(describe_run(one))
        click.echo()
        click.echo("Look at:")
        for line in where_to_look(settings, runs):
            click.echo(f"  {line}")
        if any(one.state in calendar.ALERT for one in runs):
            raise SystemExit(1)
        return
    if not no_web:
        from pipeline.web.app import root_path_for
        root_path_for(settings, root_path)  # a wrong --root-path fails here, before the scheduler starts
    Daemon(engine, settings, obj.content_dir).serve(web=not no_web, host=host or settings.web_host,
                                                    port=port or settings.web_port, root_path=root_path)
