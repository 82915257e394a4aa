"""``newsletter preview``: the issue as an editor will see it, written to a folder.

Writes ``issue.html``, ``issue.txt`` and ``issue.eml`` (a complete MIME message to
a placeholder subscriber, built by ``pipeline.delivery.message.build_message``), and with
``--screenshots`` full-page PNGs 375 px and 600 px wide taken in headless
Chromium.  The placeholder subscriber gets the public unsubscribe and
preferences pages, as the web copy does: a preview needs no secret and carries
no token.  Nothing is sent.  ``--date`` (and the default, today) reads the
database to show exactly what the day will send (``pipeline.scheduling.plan.plan_day``);
``--article`` needs no database.
"""
from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import click

from pipeline import clock
from pipeline.rendering.compose import compose_issue
from pipeline.errors import RenderError
from pipeline.rendering.issue import Personal, RenderedIssue, personalise
from pipeline.rendering.render import KB, WARN_BYTES, render_issue

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOT_WIDTHS = (375, 600)
PREVIEW_TO = "Preview Subscriber <preview@example.com>"


def preview_personal(settings) -> Personal:
    base = settings.base_url.rstrip("/")
    return Personal(unsubscribe_url=f"{base}/unsubscribe", preferences_url=f"{base}/preferences", greeting="Hello,")


def write_preview(rendered: RenderedIssue, settings, out: Path) -> dict[str, Path]:
    """Write issue.html, issue.txt and issue.eml for the placeholder subscriber."""
    from pipeline.delivery.message import build_message

    out.mkdir(parents=True, exist_ok=True)
    personal = preview_personal(settings)
    html, text = personalise(rendered, personal)
    paths = {"html": out / "issue.html", "text": out / "issue.txt", "eml": out / "issue.eml"}
    paths["html"].write_text(html, encoding="utf-8")
    paths["text"].write_text(text, encoding="utf-8")
    paths["eml"].write_bytes(build_message(rendered, settings, to=PREVIEW_TO, personal=personal))
    return paths


def screenshot(html: str, out: Path, widths=SCREENSHOT_WIDTHS, executable: str = CHROMIUM) -> list[Path]:
    """Full-page PNGs of ``html`` at each width. Every network request is refused, so a
    screenshot shows exactly what a client that blocks remote content shows."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    if not Path(executable).exists():
        raise RenderError(f"cannot take screenshots: {executable} is not installed")
    paths = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
            try:
                for width in widths:
                    page = browser.new_page(viewport={"width": width, "height": 800})
                    page.route("**/*", lambda route: route.abort())
                    page.set_content(html, wait_until="load")
                    path = out / f"issue-{width}.png"
                    page.screenshot(path=str(path), full_page=True)
                    page.close()
                    paths.append(path)
            finally:
                browser.close()
    except PlaywrightError as exc:
        raise RenderError(f"screenshots failed in Chromium: {str(exc).splitlines()[0]}") from None
    return paths


def today(settings) -> date:
    return clock.now().astimezone(ZoneInfo(settings.timezone)).date()


@click.command("preview")
@click.option("--date", "day", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Preview the issue this date (YYYY-MM-DD) will send, as the calendar and queue decide it.")
@click.option("--kind", type=click.Choice(["daily", "weekly"]), default="daily", show_default=True,
              help="With --date: the daily issue, or the weekly digest of the weekly day.")
@click.option("--article", "slug", default=None, help="Preview an issue holding this article (by slug).")
@click.option("--number", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --article: the issue number to show.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("preview"),
              show_default=True, help="Folder to write issue.html, issue.txt and issue.eml into.")
@click.option("--screenshots", is_flag=True, help="Also write PNG screenshots 375 px and 600 px wide (Chromium).")
@click.option("--correction", "correction_id", type=int, default=None, metavar="ID",
              help="Preview the notice of correction ID (`newsletter corrections` lists them).")
@click.pass_obj
def preview(obj, day: datetime | None, kind: str, slug: str | None, number: int, out: Path,
            screenshots: bool, correction_id: int | None) -> None:
    """Render an issue to files for an editor to look at; nothing is sent.

    Without --article it is exactly the issue the day will send (today by default):
    the calendar's articles, a digest, the weekly digest or the queue, with the
    subject subscribers will see."""
    if day is not None and slug is not None:
        raise click.UsageError("give --date or --article, not both")
    if correction_id is not None:
        if day is not None or slug is not None:
            raise click.UsageError("give --correction on its own, without --date or --article")
        from pipeline.corrections.cli import preview_correction
        return preview_correction(obj, correction_id, out, screenshots)
    library = obj.library()
    settings = library.settings
    on = day.date() if day is not None else today(settings)
    if slug is not None:
        from pipeline.review.reviews import attach_from_settings
        library = attach_from_settings(library)  # reads the reviews only; creates no database
        issue = compose_issue(library, on, number=number, scheduled=[slug])
    else:
        from pipeline.database import open_database
        from pipeline.scheduling.plan import plan_day

        plan = plan_day(open_database(settings.database_url), settings, library, on, kind)
        if plan.issue is None:
            click.echo(plan.describe())
            raise SystemExit(1)
        issue = plan.issue
    rendered = render_issue(issue, settings)
    paths = write_preview(rendered, settings, out)
    html = paths["html"].read_text(encoding="utf-8")
    shots = screenshot(html, out) if screenshots else []
    for path in [*paths.values(), *shots]:
        click.echo(f"wrote {path}")
    size = len(rendered.html.encode("utf-8"))
    click.echo(f"issue:     {issue.key} (number {issue.number}): {', '.join(a.slug for a in issue.articles)}")
    click.echo(f"subject:   {rendered.subject}")
    click.echo(f"preheader: {rendered.preheader}")
    click.echo(f"html size: {size / KB:.1f} KB (warning above {WARN_BYTES // KB} KB; Gmail clips at 102 KB)")
    for warning in rendered.warnings:  # render warns above WARN_BYTES, among others
        click.echo(f"warning: {warning}", err=True)
    if slug is None and kind == "daily" and _weekly_day(on, settings):
        click.echo(f"note: {on.isoformat()} is the weekly day; the weekly digest goes too (--kind weekly shows it)")


def _weekly_day(on: date, settings) -> bool:
    from pipeline.scheduling.slots import is_weekly_day
    return is_weekly_day(on, settings)
