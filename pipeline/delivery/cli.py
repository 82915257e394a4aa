"""``newsletter send`` and ``newsletter send-test``.

``send`` sends the issue ``pipeline.scheduling.plan.plan_day`` gives for the day, the one
the daemon would send: the recorded one on a re-run or ``--resume``, else the
calendar's, else the queue's when ``send_when_nothing_due`` is on.  A day that
sends nothing is refused with the reason.  It renders the issue, records it in
``issues`` and hands it to ``pipeline.delivery.deliver.send_issue`` for the daily
subscribers; a send that finishes is recorded as the day's issue on the
calendar and in the runs table.  ``send-test`` mails one "[TEST]" copy of the
same issue and never touches the ledger.
"""
from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from datetime import date
from zoneinfo import ZoneInfo

import click

from pipeline import clock
from pipeline.errors import DeliveryError, ScheduleError
from pipeline.rendering.issue import RenderedIssue


def local_today(settings) -> date:
    return clock.now().astimezone(ZoneInfo(settings.timezone)).date()


def day_plan(engine, library, day: date, kind: str = "daily", topic: str | None = None,
             override_review: str | None = None):
    """The day's plan from ``pipeline.scheduling.plan.plan_day``, the same one the daemon sends."""
    from pipeline.scheduling.plan import plan_day
    return plan_day(engine, library.settings, library, day, kind, topic=topic, override_review=override_review)


def render_plan(engine, library, plan, *, record: bool) -> RenderedIssue:
    """Render the planned issue; with ``record``, write it to the ledger first (a re-run
    or ``--resume`` then sends exactly what this run sends)."""
    from pipeline.delivery import ledger
    from pipeline.delivery.deliver import render_for_send

    rendered = render_for_send(plan.issue, library.settings)  # a failure is one line, never a traceback
    if record:
        ledger.record_issue(engine, plan.issue, rendered.subject)
    return rendered


@contextmanager
def signals_stop_the_send():
    """SIGINT or SIGTERM during a send: stop claiming, wait for the replies in flight,
    record them (``pipeline.delivery.stops``).  A second signal interrupts at once."""
    from pipeline.delivery import stops

    previous = {}

    def handler(signum, _frame) -> None:
        name = signal.Signals(signum).name
        stops.SIGNALLED.set(f"{name} ({stops.operator()})")
        for sig, old in previous.items():  # the next one is not so patient
            signal.signal(sig, old)
        os.write(2, f"{name}: stopping after the messages in flight (again to abort at once)\n".encode())

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        stops.SIGNALLED.clear()


@click.command("send")
@click.option("--date", "day", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Issue date (default: today in the configured time zone).")
@click.option("--dry-run", is_flag=True, help="Count the recipients and build one message; write and send nothing.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted send, giving deferred messages another smtp_max_attempts tries.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--topic", default=None, metavar="TOPIC",
              help="Send an issue only to this topic's subscribers (a sensitive topic gets the neutral subject).")
@click.option("--correction", "correction_id", type=int, default=None, metavar="ID",
              help="Send the notice of correction ID to everyone who got the article, exactly once.")
@click.option("--override-review", "override_review", default=None, metavar="REASON",
              help="Send although an article has no current medical approval; the reason goes in the audit log.")
@click.option("--uncertain", type=click.Choice(["resend", "skip"]), default=None,
              help="With --resume: what to do with rows left uncertain (the relay may have them): send them again, "
                   "or close them as skipped.")
@click.option("--max-wait", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Wait at most this long, in all, for deferred recipients' retries to come due; the rest are "
                   "left for the next --resume.")
@click.option("--release-all", is_flag=True,
              help="Send to every recipient now, whatever their own delivery time (otherwise each gets the issue "
                   "at their local time: this sends the waves released so far and leaves the rest to the daemon).")
@click.pass_obj
def send(obj, day, dry_run: bool, resume: bool, progress: bool | None, topic: str | None,
         correction_id: int | None, override_review: str | None, uncertain: str | None,
         max_wait: float | None, release_all: bool) -> None:
    """Send the day's issue to the daily subscribers, exactly once."""
    if correction_id is not None:
        if day or topic:
            raise click.UsageError("--correction sends that correction's notice: give it without --date or --topic")
        from pipeline.corrections.cli import send_correction
        return send_correction(obj, correction_id, resume=resume, dry_run=dry_run, progress=progress)
    from pipeline.database import open_database
    from pipeline.staff import audit

    library = obj.library()
    settings = library.settings
    day = day.date() if day else local_today(settings)
    engine = open_database(settings.database_url)
    from pipeline.delivery.claims import sharing
    sharing(settings, engine)  # asked to share sends on SQLite: one line, before anything is recorded
    if override_review is not None and not override_review.strip():
        raise ScheduleError("--override-review needs the reason, in words (it goes in the audit log)")
    plan = day_plan(engine, library, day, topic=topic, override_review=override_review)
    if not plan.sends:
        raise ScheduleError(plan.describe())
    if override_review and not dry_run:
        from pipeline.review.reviews import blocking
        unreviewed = [b.slug for b in blocking(engine, plan.issue.articles)]
        audit.write(engine, audit.operator(), "send.override-review", plan.issue.key,
                    after={"reason": audit.clean(override_review), "unreviewed": unreviewed})
        if unreviewed:
            click.echo(f"warning: sending without current medical approval: {', '.join(unreviewed)} "
                       f"(recorded in the audit log)", err=True)
    rendered = render_plan(engine, library, plan, record=not dry_run)
    if not dry_run:  # the versions that go out: `newsletter correct` compares with them
        from pipeline.corrections.records import ISSUE, remember
        remember(engine, plan.issue.articles, ISSUE)
    from pipeline import exits
    from pipeline.delivery import stops

    if resume and not dry_run:
        stops.release(engine, day)  # an operator's stop of this day ends here
    if uncertain is not None and not resume:
        raise click.UsageError("--uncertain goes with --resume (it decides rows an earlier send left uncertain)")
    # each reader's local time (pipeline.scheduling.wave_sends, as the daemon), unless --release-all
    from pipeline.scheduling import wave_sends
    custom = [e.at for e in plan.entries]
    if release_all and not dry_run:
        wave_sends.release_all(engine, plan.issue.key, clock.now())
    with signals_stop_the_send():
        summary = wave_sends.send_with_waves(
            engine, settings, rendered, custom, by_hand=True, release_all=release_all, frequency="daily",
            resume=resume, dry_run=dry_run, progress=sys.stderr.isatty() if progress is None else progress,
            uncertain=uncertain, max_wait=max_wait, notice=lambda line: click.echo(line, err=True))
    for line in summary.lines():
        click.echo(line)
    if dry_run:
        found = wave_sends.plan_lines(engine, settings, day, "daily", plan.issue.key, custom, topic,
                                      rendered.issue.topics)
        if found and not release_all:
            click.echo("waves (each reader's local time):")
            for line in found:
                click.echo(line)
    if not dry_run:
        audit.write(engine, audit.operator(), "send", plan.issue.key,
                    after={"state": summary.state, "resume": resume, "articles": list(plan.slugs)})
        from pipeline.scheduling.plan import record_hand_send
        record_hand_send(engine, plan, summary)
    again = f"newsletter send --date {day.isoformat()}{' --topic ' + topic if topic else ''} --resume"
    if summary.stopped:
        click.echo(f"{summary.stopped}; `{again}` finishes it", err=True)
        raise SystemExit(exits.STOPPED)
    if summary.lease_lost:
        raise DeliveryError("another process took this issue over (this one was stalled past its lease); "
                            "it finishes the send: see `newsletter status`")
    if summary.error:
        raise DeliveryError(f"send stopped early ({summary.error}); nothing was lost: "
                            f"fix the cause and run `{again}`")
    if summary.state == "unfinished":
        if summary.uncertain:
            click.echo(f"unfinished: {summary.uncertain} recipient(s) uncertain (the relay may have had the issue), "
                       f"{summary.deferred} not yet delivered; `{again} --uncertain resend` sends them again, "
                       f"`{again} --uncertain skip` closes them", err=True)
        else:
            click.echo(f"unfinished: {summary.deferred} recipient(s) not yet delivered; `{again}` tries them again",
                       err=True)
        raise SystemExit(exits.UNFINISHED)
    if summary.state == "waiting":
        when, left = wave_sends.next_release(engine, plan.issue.key, clock.now())
        click.echo(f"waiting: {left} recipient(s) get it at their own local time, the next wave at "
                   f"{when.astimezone(ZoneInfo(settings.timezone)):%Y-%m-%d %H:%M %Z}; the daemon sends each wave "
                   f"(`newsletter send --date {day.isoformat()} --release-all` sends them now)")


@click.command("send-test")
@click.option("--to", "to", required=True, help="Address that gets the one test copy.")
@click.option("--date", "day", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Issue date (default: today in the configured time zone).")
@click.option("--kind", type=click.Choice(["daily", "weekly"]), default="daily", show_default=True,
              help="The day's daily issue, or its weekly digest (on the weekly day).")
@click.option("--correction", "correction_id", type=int, default=None, metavar="ID",
              help="Mail a test copy of the notice of correction ID instead.")
@click.pass_obj
def send_test(obj, to: str, day, kind: str, correction_id: int | None) -> None:
    """Mail one copy of the issue the day will send, subject prefixed "[TEST]"; the ledger is not touched."""
    if correction_id is not None:
        from pipeline.corrections.cli import send_test_correction
        return send_test_correction(obj, correction_id, to)
    from pipeline.database import open_database
    from pipeline.delivery.send_test_copy import send_test as deliver_test

    library = obj.library()
    settings = library.settings
    day = day.date() if day else local_today(settings)
    plan = day_plan(open_database(settings.database_url), library, day, kind)
    if not plan.sends:
        raise ScheduleError(plan.describe())
    rendered = render_plan(None, library, plan, record=False)
    receipt = deliver_test(settings, rendered, to)
    from pipeline.staff import audit
    audit.write(open_database(settings.database_url), audit.operator(), "send.test", rendered.issue.key,
                after={"to": audit.clean(to, 320)})
    click.echo(f"issue:   {plan.describe()}")
    click.echo(f"subject: {rendered.subject}")
    click.echo(f"test copy of {rendered.issue.key} sent to {to} ({receipt})")
