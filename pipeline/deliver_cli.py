"""``newsletter send`` and ``newsletter send-test``.

``send`` composes the day's issue (or reuses the one already recorded for that
date, so a re-run or ``--resume`` sends exactly what the first run sent), renders
it, records it in ``issues`` and hands it to ``pipeline.deliver.send_issue`` for
the daily subscribers.  ``send-test`` mails one "[TEST]" copy and never touches
the ledger.
"""
from __future__ import annotations

import sys
from datetime import date
from zoneinfo import ZoneInfo

import click

from pipeline import clock
from pipeline.errors import DeliveryError
from pipeline.issue import RenderedIssue


def local_today(settings) -> date:
    return clock.now().astimezone(ZoneInfo(settings.timezone)).date()


def issue_for(engine, library, day: date, *, record: bool, topic: str | None = None) -> RenderedIssue | None:
    """The rendered daily issue of ``day``: the recorded one if it exists (a re-run or
    ``--resume`` sends exactly what the first run sent), else composed the way the
    daemon composes it: the articles the calendar has for that day, else the next
    unsent article, numbered after the daily issues of earlier days.  With ``topic``,
    the issue for that topic's subscribers only (its own key, its own ledger)."""
    from pipeline import calendar, ledger, schedule
    from pipeline.compose import compose_issue
    from pipeline.issue import issue_key
    from pipeline.deliver import render_for_send
    from subscribers.tokens import audience_label

    label = audience_label(library.settings, topic) if topic else None
    found = ledger.find_issue(engine, issue_key(day, "daily", label))
    if found is not None:
        issue = compose_issue(library, day, number=found.number, scheduled=found.articles,
                              audience_topic=found.audience_topic, kind=found.kind)
    else:
        issue = compose_issue(library, day, number=schedule.issue_number(engine, day, "daily"),
                              scheduled=[e.slug for e in calendar.scheduled_on(engine, day)],
                              sent=schedule.sent_slugs(engine), audience_topic=topic)
    if issue is None:
        return None
    rendered = render_for_send(issue, library.settings)
    if record and found is None:
        ledger.record_issue(engine, issue, rendered.subject)
    return rendered


@click.command("send")
@click.option("--date", "day", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Issue date (default: today in the configured time zone).")
@click.option("--dry-run", is_flag=True, help="Count the recipients and build one message; write and send nothing.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted send, giving deferred messages another smtp_max_attempts tries.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--topic", default=None, metavar="TOPIC",
              help="Send an issue only to this topic's subscribers (a sensitive topic gets the neutral subject).")
@click.pass_obj
def send(obj, day, dry_run: bool, resume: bool, progress: bool | None, topic: str | None) -> None:
    """Send the day's issue to the daily subscribers, exactly once."""
    from pipeline.database import open_database
    from pipeline.deliver import send_issue

    library = obj.library()
    settings = library.settings
    day = day.date() if day else local_today(settings)
    engine = open_database(settings.database_url)
    rendered = issue_for(engine, library, day, record=not dry_run, topic=topic)
    if rendered is None:
        click.echo(f"nothing to send for {day.isoformat()}: no article is due")
        return
    summary = send_issue(engine, settings, rendered, frequency="daily", resume=resume, dry_run=dry_run,
                         progress=sys.stderr.isatty() if progress is None else progress)
    for line in summary.lines():
        click.echo(line)
    if summary.error:
        raise DeliveryError(f"send stopped early ({summary.error}); nothing was lost: "
                            "fix the cause and run `newsletter send --resume`")


@click.command("send-test")
@click.option("--to", "to", required=True, help="Address that gets the one test copy.")
@click.option("--date", "day", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Issue date (default: today in the configured time zone).")
@click.pass_obj
def send_test(obj, to: str, day) -> None:
    """Mail one copy of the day's issue, subject prefixed "[TEST]"; the ledger is not touched."""
    from pipeline.database import open_database
    from pipeline.deliver import send_test as deliver_test

    library = obj.library()
    settings = library.settings
    day = day.date() if day else local_today(settings)
    rendered = issue_for(open_database(settings.database_url), library, day, record=False)
    if rendered is None:
        raise DeliveryError(f"nothing to send for {day.isoformat()}: no article is due")
    receipt = deliver_test(settings, rendered, to)
    click.echo(f"test copy of {rendered.issue.key} sent to {to} ({receipt})")
