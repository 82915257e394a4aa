"""``newsletter correct``, ``retract`` and ``corrections``, and the notice forms of
``preview --correction``, ``send-test --correction`` and ``send --correction``.

``correct`` and ``retract`` record the change (``pipeline.corrections.records``) and
rebuild the site, so the article page, the feeds and every issue page that carried
the article show it at once.  A significant correction or a retraction is then
mailed to everyone who got the article: preview it, test it, send it.
"""
from __future__ import annotations

import sys
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

import click

from pipeline import clock
from pipeline.corrections import records
from pipeline.errors import CorrectionError


def _today(settings) -> date:
    return clock.now().astimezone(ZoneInfo(settings.timezone)).date()


def _engine(settings):
    from pipeline.database import open_database
    return open_database(settings.database_url)


def _rebuild_or_why(library, engine) -> str | None:
    """Rebuild the site; None, or why it could not be written (the record stands either way)."""
    from pipeline.site.corrected import rebuild

    settings = library.settings
    try:
        written = rebuild(library, engine, _today(settings))
    except OSError as exc:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename or exc}"
    click.echo(f"site rebuilt in {settings.public_dir}: {written} file(s) changed")
    return None


def _record(obj, slug: str, note: str, kind: str, significant: bool, by: str | None, build: bool) -> None:
    from pipeline.corrections.signoff import needs_signoff
    from pipeline.delivery.stops import operator
    from pipeline.site.corrected import publish
    from pipeline.staff.audit import operator as audit_operator

    library = obj.library()
    settings = library.settings
    engine = _engine(settings)
    correction, _ = publish(engine, library, slug, note, kind=kind, significant=significant, by=operator(by),
                            actor=audit_operator(), build=False, today=_today(settings))
    before = correction.before_hash[:12] if correction.before_hash else "unknown (no earlier version on record)"
    what = "retraction" if correction.retraction else ("significant correction" if correction.significant
                                                       else "correction")
    click.echo(f"{what} {correction.id} of {slug} recorded by {correction.created_by} at "
               f"{correction.created_at.isoformat(timespec='seconds')}")
    click.echo(f"  content: before {before}, now {correction.after_hash[:12]}")
    if correction.retraction:
        click.echo(f"  {slug} is refused from every future send")
    elif needs_signoff(engine, correction):
        click.echo(f"  {slug} is held from future sends until a reviewer signs off this version")
    failed = _rebuild_or_why(library, engine) if build else None
    if correction.notifies:
        from pipeline.corrections.audience import count_audience
        count = count_audience(engine, slug)
        if count:
            click.echo(f"  notice for the {count} person(s) who got it: "
                       f"`newsletter preview --correction {correction.id}`, then "
                       f"`newsletter send --correction {correction.id}`")
        else:
            click.echo("  nobody still subscribed has received it in an issue: no notice to send")
    if failed:
        raise CorrectionError(f"{what} {correction.id} of {slug} is recorded, but the site was not rebuilt "
                              f"({failed}): fix that and run `newsletter build`")


_BUILD = click.option("--build/--no-build", default=True, show_default=True,
                      help="Rebuild the site at once (article page, feeds, issue pages).")
_BY = click.option("--by", default=None, help="Who records it (default: your user name).")


@click.command("correct")
@click.argument("slug")
@click.option("--note", required=True, help="What was wrong and what the article says now.")
@click.option("--significant", is_flag=True,
              help="A correction readers must hear about: mailed to everyone who got the article, and the "
                   "corrected version needs medical sign-off before it is sent again.")
@_BY
@_BUILD
@click.pass_obj
def correct(obj, slug: str, note: str, significant: bool, by: str | None, build: bool) -> None:
    """Record a correction of SLUG, after editing it (refused when it has not changed)."""
    _record(obj, slug, note, records.CORRECTION, significant, by, build)


@click.command("retract")
@click.argument("slug")
@click.option("--note", required=True, help="Why the article is withdrawn.")
@_BY
@_BUILD
@click.pass_obj
def retract(obj, slug: str, note: str, by: str | None, build: bool) -> None:
    """Withdraw SLUG: never sent again; its page and feed item become the notice."""
    _record(obj, slug, note, records.RETRACTION, True, by, build)


@click.command("corrections")
@click.argument("slug", required=False)
@click.pass_obj
def corrections(obj, slug: str | None) -> None:
    """List the corrections and retractions (of SLUG), oldest first, with their notices."""
    from pipeline.corrections.notice_mail import KIND
    from pipeline.delivery import ledger

    library = obj.library()
    settings = library.settings
    engine = _engine(settings)
    rows = records.listing(engine, slug)
    if slug is not None and not rows and slug not in {a.slug for a in library.articles}:
        raise CorrectionError(f"unknown article {slug!r}: no content/articles file has that slug")
    if not rows:
        click.echo("no corrections" + (f" of {slug}" if slug else ""))
        return
    tz = ZoneInfo(settings.timezone)
    with engine.connect() as conn:
        from sqlalchemy import select
        notices = {r.number: r for r in conn.execute(select(ledger.ISSUES).where(ledger.ISSUES.c.kind == KIND))}
    for row in rows:
        when = row.created_at.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")
        label = row.label() + (" (significant)" if row.significant and not row.retraction else "")
        click.echo(f"{row.id:>4}  {when}  {row.slug}  {label}  by {row.created_by}")
        click.echo(f"      {row.note}")
        click.echo(f"      content {(row.before_hash or 'unknown')[:12]} -> {row.after_hash[:12]}")
        if row.notifies:
            sent = notices.get(row.id)
            if sent is None:
                click.echo(f"      notice: not sent (`newsletter send --correction {row.id}`)")
            else:
                counts = ledger.state_counts(engine, sent.id)
                click.echo(f"      notice {sent.key}: {sent.state}, {counts[ledger.SENT]} of {sent.recipients or 0} sent")


# -- the notice's preview, test copy and send (options of `preview`, `send-test` and `send`) ------

def preview_correction(obj, correction_id: int, out: Path, screenshots: bool) -> None:
    from pipeline.corrections.send import notice_for
    from pipeline.rendering.cli import screenshot, write_preview

    library = obj.library()
    correction, rendered = notice_for(_engine(library.settings), library, correction_id)
    paths = write_preview(rendered, library.settings, out)
    shots = screenshot(paths["html"].read_text(encoding="utf-8"), out) if screenshots else []
    for path in [*paths.values(), *shots]:
        click.echo(f"wrote {path}")
    click.echo(f"notice:    {rendered.issue.key} ({correction.label().lower()} {correction.id} of {correction.slug})")
    click.echo(f"subject:   {rendered.subject}")
    click.echo(f"preheader: {rendered.preheader}")


def send_test_correction(obj, correction_id: int, to: str) -> None:
    from pipeline.corrections.send import notice_for
    from pipeline.delivery.send_test_copy import send_test

    library = obj.library()
    _correction, rendered = notice_for(_engine(library.settings), library, correction_id)
    receipt = send_test(library.settings, rendered, to)
    click.echo(f"subject: {rendered.subject}")
    click.echo(f"test copy of {rendered.issue.key} sent to {to} ({receipt})")


def send_correction(obj, correction_id: int, *, resume: bool, dry_run: bool, progress: bool | None) -> None:
    from pipeline import exits
    from pipeline.corrections.send import send_notice
    from pipeline.delivery.cli import signals_stop_the_send
    from pipeline.errors import DeliveryError

    library = obj.library()
    engine = _engine(library.settings)
    with signals_stop_the_send():
        summary = send_notice(engine, library, correction_id, resume=resume, dry_run=dry_run,
                              progress=sys.stderr.isatty() if progress is None else progress)
    for line in summary.lines():
        click.echo(line)
    again = f"newsletter send --correction {correction_id} --resume"
    if summary.stopped:
        click.echo(f"{summary.stopped}; `{again}` finishes it", err=True)
        raise SystemExit(exits.STOPPED)
    if summary.lease_lost:
        raise DeliveryError("another process took this notice over; it finishes the send")
    if summary.error:
        raise DeliveryError(f"send stopped early ({summary.error}); nothing was lost: fix the cause and run `{again}`")
    if summary.state == "unfinished":
        click.echo(f"unfinished: {summary.deferred} recipient(s) not yet delivered; `{again}` tries them again",
                   err=True)
        raise SystemExit(exits.UNFINISHED)
