"""CLI commands of the content stage: check, import, settings."""
from __future__ import annotations

from datetime import date
from pathlib import Path

import click

from pipeline.content.library import check_library


@click.command()
@click.option("--fetch-images", is_flag=True,
              help="Also send a HEAD request to each image URL and report those that do not answer.")
@click.pass_obj
def check(obj, fetch_images: bool) -> None:
    """Validate the whole library; report every problem as file:line and exit non-zero on any error."""
    library, problems = check_library(obj.content_dir)
    if fetch_images:
        from pipeline.content.image_fetch import fetch_problems
        problems = problems + fetch_problems(obj.content_dir)
    problems = problems + _schedule_problems(obj.content_dir)
    if library is not None:
        problems = problems + _review_problems(library)
    for problem in problems:
        click.echo(str(problem), err=problem.level == "error")
    errors = sum(p.level == "error" for p in problems)
    warnings = sum(p.level == "warning" for p in problems)
    if errors:
        click.echo(f"check failed: {errors} error(s), {warnings} warning(s)", err=True)
        raise SystemExit(1)
    click.echo(f"ok: {len(library.articles)} article(s), {len(library.authors)} author(s), {warnings} warning(s)")


def _schedule_problems(content_dir: Path) -> list:
    """The schedule settings, checked as the daemon will use them (see pipeline.scheduling.check)."""
    from pipeline.content.library import Problem
    from pipeline.errors import ContentError
    from pipeline.scheduling.check import settings_problems
    from pipeline.settings import SITE_FILE, _line_of, load_settings

    try:
        settings = load_settings(content_dir)
    except ContentError:
        return []  # check_library reported it already
    path = settings.source or Path(content_dir) / SITE_FILE
    return [Problem(path, _line_of(path, name) if path.exists() else None, message, level)
            for name, level, message in settings_problems(settings)]


def _review_problems(library) -> list:
    """With ``review_required``, each article whose current version no reviewer approved
    (a scheduled send of it would be refused): a warning at its file."""
    from pipeline.content.library import Problem

    settings = library.settings
    if not settings.review_required:
        return []
    from pipeline.database import open_database
    from pipeline.review.reviews import statuses
    from pipeline.scheduling.slots import zone

    try:
        found = statuses(open_database(settings.database_url), library.articles)
    except Exception as exc:  # the content is fine; only the sign-off could not be read
        return [Problem(settings.source or Path("site.yaml"), None,
                        f"medical sign-off not checked: the database cannot be read ({type(exc).__name__})", "warning")]
    tz = zone(settings)
    return [Problem(a.source or Path(a.slug), 1, f"not medically approved: {found[a.slug].describe(tz)}; "
                    f"a send of it is refused until a reviewer approves this version "
                    f"(`newsletter review approve {a.slug} --as EMAIL`)", "warning")
            for a in library.articles if not found[a.slug].approved]


def _topics(_ctx, _param, value: str | None) -> tuple[str, ...]:
    topics: list[str] = []
    for topic in (value or "").split(","):
        if topic.strip() and topic.strip() not in topics:
            topics.append(topic.strip())
    return tuple(topics)


def _date(_ctx, _param, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


@click.command("import")
@click.argument("page", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Content folder to write into (default: the --content folder).")
@click.option("--slug", default=None, help="Article slug (default: from the title, without words like 'what is').")
@click.option("--published", default=None, callback=_date,
              help="Publication date YYYY-MM-DD (default: the latest date a reference was cited).")
@click.option("--topics", default=None, callback=_topics, help="Comma-separated topic ids from site.yaml.")
@click.option("--summary", default=None, help="One or two sentences that add to the opening (default: a list of the sections, to be rewritten).")
@click.option("--force", is_flag=True, help="Replace an existing article (and author file) that differs.")
@click.pass_obj
def import_page(obj, page: Path, out_dir: Path | None, slug: str | None, published: date | None,
                topics: tuple[str, ...], summary: str | None, force: bool) -> None:
    """Convert a library page (text or HTML) into an article."""
    from pipeline.importing.importer import import_cli
    import_cli(page, out_dir or obj.content_dir, obj.content_dir, slug=slug, published=published,
               topics=topics, summary=summary, force=force)


@click.command("settings")
@click.pass_obj
def settings_cmd(obj) -> None:
    """List every setting with its current value, default, environment name and help."""
    from rich.console import Console
    from rich.table import Table

    from pipeline.settings import BY_NAME, describe

    current = obj.settings()
    table = Table("setting", "value", "default", "environment", "help", show_lines=False)
    for name, default, env, help_text in describe():
        value = "(secret)" if BY_NAME[name].secret and current[name] else repr(current[name])
        table.add_row(name, value if len(value) < 60 else value[:57] + "...", default, env, help_text)
    Console(width=200).print(table)
