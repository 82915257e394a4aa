"""``newsletter subscribers ...``: the operator's view of the store.

Bad input is a ``SubscriberError``, printed by ``pipeline.cli.main`` as one
line with a non-zero exit.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from pipeline.errors import SubscriberError
from subscribers.models import FREQUENCIES, STATUSES
from pipeline.privacy import rights


def _open(ctx: click.Context):
    from pipeline.database import open_database

    settings = ctx.obj.settings()
    return settings, open_database(settings.database_url)


def _topics(value: str | None) -> list[str]:
    return [t for t in (value or "").replace(";", ",").split(",") if t.strip()]


@click.group("subscribers")
def subscribers() -> None:
    """Add, import, export, list, show, unsubscribe and erase subscribers."""


@subscribers.command("add")
@click.argument("email")
@click.option("--name", help="The person's name (used in the greeting).")
@click.option("--topics", help="Comma-separated topic ids (see content/site.yaml).")
@click.option("--frequency", type=click.Choice(FREQUENCIES), default="daily", show_default=True)
@click.option("--confirmed", is_flag=True, help="The person already consented elsewhere: no confirmation email.")
@click.option("--consent", help="With --confirmed: the exact wording the person agreed to.")
@click.pass_context
def add_cmd(ctx, email, name, topics, frequency, confirmed, consent) -> None:
    """Add one person; without --confirmed they get a confirmation email (double opt-in)."""
    from subscribers import mailqueue, signup, store

    settings, engine = _open(ctx)
    if consent and not confirmed:
        raise SubscriberError("--consent is only used with --confirmed (otherwise the person confirms by email)")
    if confirmed:
        info = store.add(engine, settings, email, name=name, topics=_topics(topics), frequency=frequency,
                         confirmed=True, consent=consent)
        click.echo(f"added {info.email} (confirmed)")
        return
    reason = store.suppression_reason(engine, settings, email)
    if reason:
        raise SubscriberError(f"{email} is on the suppression list ({reason}); only the person can subscribe "
                              "again, through the sign-up form")
    existing = store.get_by_email(engine, email)
    if existing:
        raise SubscriberError(f"{existing.email} is already in the store (status {existing.status})")
    signup.sign_up(engine, settings, email, name=name, topics=_topics(topics), frequency=frequency, method="cli")
    mailqueue.drain(engine, settings, timeout=30)  # the operator sees whether it left
    info = store.get_by_email(engine, email)
    waiting = mailqueue.pending(engine)
    click.echo(f"added {info.email} (pending: confirmation email "
               + ("queued; the relay did not take it yet, it is retried)" if waiting else "sent)"))


@subscribers.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--consent", help="Consent wording for rows without a 'consent' cell.")
@click.pass_context
def import_cmd(ctx, file: Path, consent: str | None) -> None:
    """Import a CSV file (email,name,topics,frequency,consent,consent_version,consented_at).

    Good rows are imported; each bad row is reported with its line number.
    Exits 1 when any row was rejected."""
    from subscribers.csvio import import_file

    settings, engine = _open(ctx)
    report = import_file(engine, settings, file, default_consent=consent)
    for line in report.lines():
        click.echo(line)
    if report.rejected:
        sys.exit(1)


@subscribers.command("export")
@click.option("--out", type=click.Path(path_type=Path), help="Write to this file instead of standard output.")
@click.option("--status", type=click.Choice(STATUSES))
@click.pass_context
def export_cmd(ctx, out: Path | None, status: str | None) -> None:
    """Export subscribers as CSV (formula-looking cells escaped with a leading ')."""
    from subscribers.csvio import write_export

    _, engine = _open(ctx)
    if out is None:
        write_export(engine, sys.stdout, status=status)
        return
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        count = write_export(engine, f, status=status)
    tmp.replace(out)  # a reader never sees half an export
    click.echo(f"exported {count} subscriber(s) to {out}", err=True)


@subscribers.command("list")
@click.option("--status", type=click.Choice(STATUSES))
@click.pass_context
def list_cmd(ctx, status: str | None) -> None:
    """One line per subscriber: id, status, frequency, email, name."""
    from subscribers import store

    _, engine = _open(ctx)
    for info in store.iter_subscribers(engine, status):
        click.echo(f"{info.id}\t{info.status}\t{info.frequency}\t{info.email}\t{info.name or ''}")


@subscribers.command("show")
@click.argument("email")
@click.pass_context
def show_cmd(ctx, email: str) -> None:
    """Everything held about one subscriber, as JSON."""
    from subscribers import store

    from pipeline.staff import audit

    settings, engine = _open(ctx)
    info = store.get_by_email(engine, email)
    # the look-up itself is recorded (by subscriber id, so an erasure leaves no address behind)
    audit.write(engine, audit.operator(), "subscriber.lookup", f"subscriber #{info.id}" if info else "(no match)")
    if info is None:
        reason = store.suppression_reason(engine, settings, email)
        raise SubscriberError(f"no subscriber {email}" + (f" (the address is suppressed: {reason})" if reason else ""))
    click.echo(json.dumps(rights.export_data(engine, settings, info.id), indent=2, ensure_ascii=False))


@subscribers.command("unsubscribe")
@click.argument("email")
@click.pass_context
def unsubscribe_cmd(ctx, email: str) -> None:
    """Unsubscribe one address (and suppress it)."""
    from subscribers import store

    settings, engine = _open(ctx)
    info = store.unsubscribe(engine, settings, email, method="cli")
    if info is None:
        raise SubscriberError(f"no subscriber {email}")
    click.echo(f"{info.email}: {info.status}")


@subscribers.command("erase")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def erase_cmd(ctx, email: str, yes: bool) -> None:
    """Delete a person's data, keeping only the suppression hash (UK GDPR erasure)."""
    from subscribers import store

    settings, engine = _open(ctx)
    info = store.get_by_email(engine, email)
    if info is None:
        raise SubscriberError(f"no subscriber {email}")
    if not yes:
        click.confirm(f"Erase {info.email} and all their data? This cannot be undone", abort=True)
    rights.erase(engine, settings, info.id, method="cli")
    click.echo(f"erased {info.email}; only a keyed hash is kept on the suppression list")
