"""The ``newsletter`` command.

Each stage keeps its commands next to its code; this module only gathers them.
A ``NewsletterError`` is printed as one line (``file:line: reason``) with a
non-zero exit, never as a traceback.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from pipeline.errors import NewsletterError

# name -> "module:attribute" of a click command; loaded only when used, so
# `newsletter --help` stays fast and one stage's import error cannot break the rest.
COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("pipeline.content.cli:check", "Validate the whole library (articles, authors, site settings)."),
    "import": ("pipeline.content.cli:import_page", "Convert a library page (text or HTML) into an article."),
    "settings": ("pipeline.content.cli:settings_cmd", "List every setting with its value, default and help."),
    "run": ("pipeline.scheduling.run_cli:run", "The main job: send each day's issue at the send time, serve the web (--once: now)."),
    "schedule": ("pipeline.scheduling.cli:schedule_group", "The editorial calendar: add, list, move, cancel."),
    "pause": ("pipeline.scheduling.cli:pause", "Stop sending (until a date, or until `newsletter resume`)."),
    "resume": ("pipeline.scheduling.cli:resume", "Start sending again after a pause."),
    "status": ("pipeline.ops.cli:status", "Daemons, next sends, last sends with live counts, alerts, the queue (exit 2 on alert; --json)."),
    "stop": ("pipeline.ops.cli:stop", "Stop a send under way: no new message starts, replies in flight are recorded (resume finishes it)."),
    "subscribers": ("subscribers.cli:subscribers", "Add, import, export, list, show, unsubscribe and erase subscribers."),
    "serve": ("pipeline.web.app:serve", "Serve sign-up, confirmation, preferences, one-click unsubscribe and public/."),
    "bounces": ("pipeline.bounces.cli:bounces", "Bounces and complaints after the send: ingest, serve, poll, list, show, release."),
    "build": ("pipeline.site.cli:build", "Write the feeds, article pages and archive to public/ (--date: that day's issue page)."),
    "preview": ("pipeline.rendering.cli:preview", "Render an issue to issue.html/.txt/.eml (and --screenshots) for editors."),
    "send": ("pipeline.delivery.cli:send", "Send the day's issue to the daily subscribers, exactly once (--resume, --dry-run)."),
    "send-test": ("pipeline.delivery.cli:send_test", "Mail one [TEST] copy of the day's issue to --to; the ledger is untouched."),
    "correct": ("pipeline.corrections.cli:correct", "Record a correction of an edited article (--significant: mail a notice)."),
    "retract": ("pipeline.corrections.cli:retract", "Withdraw an article: never sent again; its page and feed item become the notice."),
    "corrections": ("pipeline.corrections.cli:corrections", "List the corrections and retractions, with their notices."),
    "staff": ("pipeline.staff.cli:staff_group", "Staff accounts of the console: add, list, disable, reset."),
    "audit": ("pipeline.staff.cli:audit_cmd", "Read the audit log (--since, --actor, --action)."),
    "review": ("pipeline.review.cli:review_group", "Medical sign-off: approve or reject an article's current version."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module, _, attr = COMMANDS[name][0].partition(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # one-line help without importing every stage
        rows = [(name, COMMANDS[name][1]) for name in sorted(COMMANDS)]
        rows += [(name, cmd.get_short_help_str()) for name, cmd in self.commands.items() if name not in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


class Context:
    """What every command gets: where the content lives."""

    def __init__(self, content_dir: Path):
        self.content_dir = content_dir

    def settings(self):
        from pipeline.settings import load_settings
        return load_settings(self.content_dir)

    def library(self):
        from pipeline.content.library import load_library
        return load_library(self.content_dir)

    def console(self, settings, engine=None):
        """The editorial console app, for ``serve`` and ``run`` to mount at /admin (the console
        sits above every stage, so the web service is handed it rather than importing it)."""
        from pipeline.console.app import create_console
        from pipeline.database import open_database
        return create_console(settings, engine or open_database(settings.database_url), self.content_dir)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--content", "content_dir", type=click.Path(path_type=Path), default="content", show_default=True,
              envvar="NEWSLETTER_CONTENT", help="The content folder (articles, authors, site.yaml).")
@click.pass_context
def cli(ctx: click.Context, content_dir: Path) -> None:
    """library-newsletter: a health library's articles as a daily email and feeds."""
    ctx.obj = Context(content_dir)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="newsletter", standalone_mode=False)
    except NewsletterError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # the database went away, or the like: one line, never a traceback
        from sqlalchemy.exc import DBAPIError
        if not isinstance(exc, DBAPIError):
            raise
        first = (str(exc.orig or "").strip().splitlines() or [""])[0]
        click.echo(f"error: the database failed ({type(exc.orig).__name__}: {first}); "
                   "run the command again once it is back (a send resumes from its ledger)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
