"""``newsletter build``: write the static archive and the feeds to ``public/``.

Two phases, as everywhere: load and check the whole library first (any error
fails the build before a file is written), then write.  With ``--date`` the
issue for that date is also composed, rendered and published as its "view in
browser" page.  Without a database at hand, the issue's number and the queue
position come from the archive itself: issues already published before that
date count as sent.
"""
from __future__ import annotations

import importlib
from datetime import date, datetime
from pathlib import Path

import click

from pipeline.content.library import Library, LibraryError, check_library
from pipeline.site.buildcache import CACHE_DIR
from pipeline.errors import ContentError, NewsletterError, RenderError
from pipeline.site.views import today
from pipeline.rendering.issue import RenderedIssue
from pipeline.settings import load_settings
from pipeline.site.pages import BuildReport, build_site, publish_issue, published_issues


def load_checked(content_dir: Path, cache_dir: Path | None = None) -> Library:
    library, problems = check_library(content_dir, cache_dir=cache_dir)
    for problem in problems:
        click.echo(str(problem), err=True)
    if library is None:
        raise LibraryError(problems)
    return library


def render_issue_for(library: Library, day: date, public_dir: Path) -> RenderedIssue | None:
    """Compose and render the issue of ``day``; None when nothing is due."""
    try:
        compose = importlib.import_module("pipeline.rendering.compose")
        render = importlib.import_module("pipeline.rendering.render")
    except ModuleNotFoundError as exc:
        raise RenderError(f"cannot build an issue: the {exc.name} stage is not available") from None
    earlier = [r for r in published_issues(public_dir) if r.kind == "daily" and r.date < day]
    issue = compose.compose_issue(library, day, number=len(earlier) + 1,
                                  sent={slug for r in earlier for slug in r.articles})
    if issue is None:
        return None
    return render.render_issue(issue, library.settings)


def _report(report: BuildReport, out: Path) -> None:
    for name in report.written:
        click.echo(f"wrote {out / name}")
    for name in report.removed:
        click.echo(f"removed {out / name}")
    click.echo(f"{len(report.written)} written, {len(report.unchanged)} unchanged, {len(report.removed)} removed")


@click.command("build")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: the public_dir setting).")
@click.option("--date", "day", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Also compose, render and publish the issue of this date (YYYY-MM-DD).")
@click.pass_obj
def build(obj, out: Path | None, day: datetime | None) -> None:
    """Write the feeds, article pages and archive (and with --date, that day's issue page)."""
    try:
        _build(obj, out, day)
    except OSError as exc:  # a folder that cannot be written: one line, never a traceback
        raise NewsletterError(f"cannot write the site: {exc.strerror or exc}"
                              f"{' (' + str(exc.filename) + ')' if getattr(exc, 'filename', None) else ''}") from None


def _build(obj, out: Path | None, day: datetime | None) -> None:
    if out is None:
        try:
            out = Path(load_settings(obj.content_dir).public_dir)
        except ContentError:
            out = None  # check_library reports it, with every other problem
    library = load_checked(obj.content_dir, out / CACHE_DIR if out is not None else None)
    out = out or Path(library.settings.public_dir)
    notices = {}
    if not library.settings.database_not_created:  # else no review or correction exists (nor SQLAlchemy import)
        from pipeline.review.reviews import attach_from_settings
        library = attach_from_settings(library)  # "Medically reviewed by ..." on approved articles' pages
        from pipeline.corrections.notices import site_update
        # first: a build that cannot read the corrections writes nothing (a retraction never reverts)
        notices = site_update(library, max(today(library.settings), day.date()) if day else today(library.settings))
    _report(_write(library, out, day, notices), out)


def _write(library, out: Path, day: datetime | None, notices) -> BuildReport:
    report = BuildReport((), ())
    as_of = None
    if day is not None:
        issue_day = day.date()
        rendered = render_issue_for(library, issue_day, out)
        if rendered is None:
            click.echo(f"no issue for {issue_day}: nothing is due")
        else:
            report += publish_issue(rendered, out, settings=library.settings)
            click.echo(f"issue {rendered.issue.key} (number {rendered.issue.number}): {rendered.subject}")
            click.echo(f"view in browser: {rendered.web_url}")
        # the issue's articles must have pages even when it is built ahead of its day
        as_of = max(today(library.settings), issue_day)
    report += build_site(library, out, as_of=as_of, notices=notices)
    return report
