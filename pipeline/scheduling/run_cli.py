"""``newsletter run``: the main job, and ``newsletter run --once``.

One process holds:

- an APScheduler 3 ``BackgroundScheduler`` with its jobs in memory: ``next-send``,
  a date job at the next send instant, and ``reconcile`` (every
  ``reconcile_seconds``), which re-reads site settings, the calendar and the
  pause, and re-plans ``next-send``;
- a sender thread (``pipeline.scheduling.sender.Sender``) that does whatever is due
  (``schedule.wake``: send, record missed or paused days) when either job pokes
  it.  A send can take hours, so it never runs inside a scheduler job: planning
  goes on meanwhile, and APScheduler never skips a reconcile for "maximum number
  of running instances";
- a heartbeat thread writing this daemon's row in ``heartbeats`` (what
  ``newsletter status`` reads), independent of both;
- the web service (uvicorn), unless ``--no-web``.

Why the scheduler's jobs are in memory, one store per daemon: APScheduler 3 must
not share a job store between schedulers, and it never notices rows another
process changes.  The database already says everything a daemon needs (the
calendar, the pause, the ``runs`` table), so each daemon rebuilds its plan from
it every ``reconcile_seconds``.  Which daemon sends is settled by the send lease
and the ``runs`` table, never by the scheduler.

SIGTERM or SIGINT stops a running send the way ``newsletter stop`` does (no new
message, the replies in flight recorded: see ``pipeline.delivery.stops``), logs it, and
exits 0; the day is recorded ``stopped`` for ``newsletter resume`` (unless other live
nodes share the send: then this node only leaves it).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import click
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from pipeline.scheduling import calendar, schedule, wave_sends
from pipeline.delivery import leases, stops
from pipeline.scheduling import slots
from pipeline import clock
from pipeline.scheduling.calendar import Run
from pipeline.errors import ContentError, ScheduleError
from pipeline.scheduling.sender import Heartbeat, Sender
from pipeline.settings import Settings, load_settings

log = logging.getLogger("newsletter.run")

SEND_JOB = "next-send"
RECONCILE_JOB = "reconcile"


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
        self.holder = holder or leases.new_holder()
        self.started_at = clock.now()
        self._reconciling = threading.Lock()
        self._stopping = threading.Event()
        self.scheduler: BackgroundScheduler | None = None
        self.sender = Sender(self)
        self.heartbeat = Heartbeat(self)

    # -- jobs ----------------------------------------------------------------------------
    def reload_settings(self) -> None:
        """Editors may change site.yaml (send time, weekly day...) while the daemon runs.
        A broken file keeps the previous settings; the day's run will report it."""
        try:
            fresh = load_settings(self.content_dir)
            slots.zone(fresh), slots.parse_hhmm(fresh.send_time, "send_time"), slots.weekly_weekday(fresh)
        except (ContentError, ScheduleError) as exc:
            log.error("site settings do not load, keeping the previous ones: %s", exc)
            return
        # the database cannot change under a running daemon
        self.settings = fresh.replace(database_url=self.settings.database_url,
                                      send_nodes=self.settings.send_nodes)  # nor whether it shares sends

    def reconcile(self) -> None:
        with self._reconciling:
            if self._stopping.is_set():
                return
            try:
                self.reload_settings()
                self.sender.poke("reconcile")
                if not self._stopping.is_set():
                    self.plan()
            except Exception:  # the next reconcile tries again; the daemon must not die of a hiccup
                log.exception("reconcile failed")

    def send_time(self) -> None:
        """The ``next-send`` job: wake the sender now (it is punctual even mid-reconcile)."""
        self.sender.poke("send time")

    def tick(self, why: str) -> list[Run]:
        """Do what is due now, in the calling thread (the sender thread calls this)."""
        try:
            runs = schedule.wake(self.engine, self.settings, self.content_dir, self.holder)
        except Exception:
            log.exception("wake-up failed (%s)", why)
            return []
        for run in runs:
            if run is not None:
                log.info("%s: %s issue of %s: %s%s", why, run.kind, run.day.isoformat(), run.state,
                         f" ({run.error})" if run.error else "")
        return runs

    def next_instant(self) -> datetime | None:
        settings = self.settings
        now = clock.now()
        start = slots.local_day(now, slots.zone(settings))
        custom = schedule.custom_times(self.engine, start, start + timedelta(days=10))
        pause = calendar.get_pause(self.engine)
        # the editors' send times, and each reader's wave (a day's first, a waiting issue's next)
        found = [slots.next_instant(now, settings, custom, pause),
                 wave_sends.next_instant(self.engine, settings, now, custom, pause)]
        return min((f for f in found if f is not None), default=None)

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
        grace_seconds = int(slots.grace(self.settings).total_seconds())
        self.scheduler.add_job(self.send_time, "date", run_date=at, id=SEND_JOB, jobstore="default",
                               replace_existing=True, misfire_grace_time=max(grace_seconds, 1), coalesce=True,
                               max_instances=1)
        log.info("next send planned at %s", instant.astimezone(slots.zone(self.settings)).isoformat())

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        stops.SIGNALLED.clear()
        leases.beat(self.engine, self.holder, self.started_at)
        self.heartbeat.start()
        self.sender.start()
        scheduler = BackgroundScheduler(jobstores={"default": MemoryJobStore()},
                                        executors={"default": {"type": "threadpool", "max_workers": 2}},
                                        timezone=clock.UTC)
        self.scheduler = scheduler
        scheduler.start()
        # the missed-send check and first plan happen at once, then every reconcile_seconds
        scheduler.add_job(self.reconcile, "interval", seconds=float(self.settings.reconcile_seconds),
                          id=RECONCILE_JOB, next_run_time=datetime.now(clock.UTC), max_instances=1, coalesce=True,
                          misfire_grace_time=None)
        log.info("newsletter run started as %s (send time %s %s, reconcile every %ss)", self.holder,
                 self.settings.send_time, self.settings.timezone, self.settings.reconcile_seconds)

    def stop(self, why: str | None = None) -> None:
        """Shut down: a send in progress starts no new message and records the replies in
        flight (on a shared send with other live nodes this node just leaves it; else the
        day is recorded ``stopped`` until an editor resumes it), then everything ends."""
        self._stopping.set()
        by = why or f"shutdown of newsletter run (pid {os.getpid()})"
        if self.sender.busy:
            log.warning("%s: stopping the send under way (no new message; recording the replies in flight)", by)
        stops.SIGNALLED.set(by)
        with self._reconciling:
            pass
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.sender.stop()
        self.heartbeat.stop()
        try:
            leases.forget(self.engine, self.holder)
        except Exception:
            log.exception("could not remove the heartbeat")
        stops.SIGNALLED.clear()
        log.info("newsletter run stopped")

    def serve(self, *, web: bool, host: str, port: int, root_path: str | None = None) -> None:
        from subscribers.mailqueue import MailWorker

        received: list[str] = []
        self.start()
        mail = MailWorker(self.engine, self.settings).start()  # transactional mail (sign-ups): the queue
        try:
            if web:
                _serve_web(self.settings, self.engine, host, port, received, root_path, self.content_dir)
            else:
                _wait_for_signal(received)
        finally:
            mail.stop()
            self.stop(f"{received[0]} to newsletter run (pid {os.getpid()})" if received else None)


def _noting(received: list[str], then=None):
    def handler(signum, _frame) -> None:
        name = signal.Signals(signum).name
        if not received:
            received.append(name)
            log.warning("%s received: stopping", name)
        if then is not None:
            then()
    return handler


def _serve_web(settings: Settings, engine: Engine, host: str, port: int, received: list[str],
               root_path: str | None = None, content_dir: Path | None = None) -> None:
    import uvicorn

    from pipeline.console.app import create_console
    from pipeline.web.app import create_app, root_path_for
    from pipeline.web.http import forwarded_allow_ips

    # uvicorn installs its own SIGINT/SIGTERM handlers while it runs, and re-raises the
    # signal when it is done, to the handler it found: this one notes it, so that the
    # send is stopped, the scheduler shut down and the heartbeat removed before exit
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _noting(received))
    # the same uvicorn settings as `newsletter serve`: no Server header, the same root path;
    # the daemon sends the mail queue itself (mail_worker=False)
    uvicorn.Server(uvicorn.Config(create_app(settings, engine, mail_worker=False,
                                             admin=create_console(settings, engine, content_dir or "content")), host=host, port=port,
                                  log_level="info", access_log=False, server_header=False, proxy_headers=True,
                                  forwarded_allow_ips=forwarded_allow_ips(settings),
                                  root_path=root_path_for(settings, root_path))).run()


def _wait_for_signal(received: list[str]) -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _noting(received, stop.set))
    while not stop.wait(1.0):
        pass


# -- run --once --------------------------------------------------------------------------------

def run_once(engine: Engine, settings: Settings, content_dir: Path, day: date) -> list[Run]:
    """The day's work now, whatever the time: the daily issue, and on the weekly day
    the weekly digest.  A day already sent is not sent again."""
    holder = leases.new_holder()
    runs = [schedule.run_day(engine, settings, content_dir, day, "daily", force=True, holder=holder)]
    if slots.is_weekly_day(day, settings):
        runs.append(schedule.run_day(engine, settings, content_dir, day, "weekly", force=True, holder=holder))
    return [run if run.holder == holder else replace(run, error=run.error or "done earlier; not sent again")
            for run in runs]


def rehearse(engine: Engine, settings: Settings, content_dir: Path, at: str) -> None:
    """``run --once --at``: stop the clock at a local moment and wake as the daemon would
    then (send what is due, record what was missed).  The clock stands still for the
    run, so every time it records is that moment."""
    try:
        local = datetime.strptime(at.strip(), "%Y-%m-%d %H:%M")
    except ValueError:
        raise ScheduleError(f"--at must be 'YYYY-MM-DD HH:MM' (local time in {settings.timezone}), got {at!r}") from None
    instant = slots.send_instant(local.date(), local.time(), slots.zone(settings))
    click.echo(f"clock set to {instant.astimezone(slots.zone(settings)):%Y-%m-%d %H:%M %Z} ({instant:%H:%M}Z)")
    with clock.frozen_clock(instant):
        runs = schedule.wake(engine, settings, content_dir, leases.new_holder())
        for one in runs:
            click.echo(describe_run(one))
        if not runs:
            click.echo("nothing was due at that moment")
        upcoming = slots.next_instant(instant, settings, schedule.custom_times(
            engine, local.date(), local.date() + timedelta(days=9)), calendar.get_pause(engine))
    if upcoming is not None:
        click.echo(f"next send: {upcoming.astimezone(slots.zone(settings)):%Y-%m-%d %H:%M %Z}")
    if any(one.state in calendar.ALERT for one in runs):
        raise SystemExit(1)


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
@click.option("--at", "at", default=None, metavar="'YYYY-MM-DD HH:MM'",
              help="With --once: rehearse that moment (local time in the schedule's time zone): the clock is set "
                   "to it and the daemon does what it would do then.")
@click.option("--no-web", is_flag=True, help="Do not serve the web service in this process.")
@click.option("--host", default=None, help="Web service address (default: the web_host setting).")
@click.option("--port", type=int, default=None, help="Web service port (default: the web_port setting).")
@click.option("--root-path", default=None, metavar="PATH",
              help="base_url's path, when a reverse proxy strips it (default: the web_root_path setting).")
@click.option("--join", is_flag=True, help="Share every send with the other nodes (send_nodes 'share'; "
                                           "PostgreSQL only).")
@click.pass_obj
def run(obj, once: bool, day: str | None, at: str | None, no_web: bool, host: str | None,
        port: int | None, root_path: str | None, join: bool) -> None:
    """Run the newsletter: send each day's issue at the send time, serve the web service.

    With --once, do one day's work now and exit (non-zero if it failed).
    """
    from pipeline.database import open_database

    from pipeline.scheduling.check import require_valid

    if (day is not None or at is not None) and not once:
        raise ScheduleError("--date and --at only go with --once")
    if day is not None and at is not None:
        raise ScheduleError("give --date or --at, not both")
    settings = obj.settings()
    require_valid(settings)  # a bad send_time or weekly_day stops here, not every reconcile
    if join:
        settings = settings.replace(send_nodes="share")
    configure_logging()
    engine = open_database(settings.database_url)
    from pipeline.delivery.claims import sharing
    sharing(settings, engine)  # nodes15: asked to share sends on SQLite, one line and exit 1 here
    if once and at is not None:
        rehearse(engine, settings, obj.content_dir, at)
        return
    if once:
        target = slots.parse_day(day, "--date") if day else slots.today(settings)
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
