"""``newsletter bounces ...``: ways in (ingest, serve, poll) and the operator's evidence (list, show, release)."""
from __future__ import annotations

import getpass
import json
import mailbox
import os
import sys
import time
from pathlib import Path

import click
from sqlalchemy.exc import SQLAlchemyError

from pipeline import exits
from pipeline.errors import BounceError, NewsletterError


def _open(ctx: click.Context):
    from pipeline.database import open_database

    settings = ctx.obj.settings()
    return settings, open_database(settings.database_url)


@click.group("bounces")
def bounces() -> None:
    """Bounces and complaints after the send: ingest, serve, poll, list, show, release, prune."""


def _messages(data: bytes, name: str):
    """(label, raw bytes) of each message: one per file, or each of an mbox."""
    if data.startswith(b"From ") and b"\n" in data:
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".mbox") as tmp:
            tmp.write(data)
            tmp.flush()
            box = mailbox.mbox(tmp.name, create=False)
            try:
                for n, key in enumerate(box.keys(), 1):
                    yield f"{name}#{n}", box.get_bytes(key, from_=False)
            finally:
                box.close()
        return
    yield name, data


@bounces.command("ingest")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def ingest(ctx, files: tuple[Path, ...]) -> None:
    """Read bounce or complaint messages from FILES (one message each, or an mbox), or from stdin
    (a .forward or an MTA pipe), and apply them.  Exit 1 if any could not be read or recorded."""
    from pipeline.bounces.process import ingest_message

    settings, engine = _open(ctx)
    sources = [(str(f), f) for f in files] or [("stdin", None)]
    failed = processed = 0
    for label, path in sources:
        try:
            data = path.read_bytes() if path is not None else sys.stdin.buffer.read()
        except OSError as exc:
            click.echo(f"{label}: cannot read: {exc.strerror or exc}", err=True)
            failed += 1
            continue
        for name, raw in _messages(data, label):
            if not raw.strip():
                click.echo(f"{name}: empty, nothing recorded", err=True)
                failed += 1
                continue
            try:
                result = ingest_message(engine, settings, raw, "ingest")
            except (NewsletterError, SQLAlchemyError) as exc:
                why = exc if isinstance(exc, NewsletterError) else f"database: {type(exc).__name__}"
                click.echo(f"{name}: not recorded: {why}", err=True)
                failed += 1
                continue
            processed += 1
            click.echo(f"{name}: {result.line()}")
    click.echo(f"{processed} message(s) recorded, {failed} not")
    if failed:
        # from a pipe (.forward, an MTA's pipe transport) EX_TEMPFAIL makes the MTA keep the message and retry
        sys.exit(exits.TEMPFAIL if not files else exits.ERROR)


@bounces.command("serve")
@click.option("--host", help="Address to listen on (default: bounce_listen_host).")
@click.option("--port", type=int, help="Port to listen on (default: bounce_listen_port).")
@click.option("--lmtp", is_flag=True, help="Speak LMTP (RFC 2033) instead of SMTP, for an MTA's lmtp transport.")
@click.pass_context
def serve(ctx, host: str | None, port: int | None, lmtp: bool) -> None:
    """Receive bounce mail from the MX over SMTP or LMTP; each message is recorded before it is acknowledged."""
    import signal
    import threading

    from pipeline.bounces.receive import controller

    settings, engine = _open(ctx)
    host, port = host or settings.bounce_listen_host, port or settings.bounce_listen_port
    server = controller(engine, settings, host, port, lmtp=lmtp)
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        raise BounceError(f"cannot listen on {host}:{port}: {exc}") from None
    click.echo(f"receiving bounces over {'LMTP' if lmtp else 'SMTP'} on {host}:{port}", err=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop()
    click.echo(f"stopped; {server.handler.processed} message(s) recorded", err=True)


@bounces.command("poll")
@click.option("--loop", is_flag=True, help="Keep polling every bounce_imap_poll_seconds.")
@click.pass_context
def poll(ctx, loop: bool) -> None:
    """Read the bounce mailbox over IMAP (bounce_imap_* settings); each message recorded is deleted."""
    from pipeline.bounces.receive import poll_imap

    settings, engine = _open(ctx)
    while True:
        result = poll_imap(engine, settings)
        for line in result.lines:
            click.echo(line)
        click.echo(f"{result.processed} message(s) recorded, {result.failed} left in the mailbox")
        if not loop:
            if result.failed:
                sys.exit(1)
            return
        time.sleep(float(settings.bounce_imap_poll_seconds))


@bounces.command("list")
@click.option("--address", help="Only this address's events.")
@click.option("--kind", help="Only events of this kind (hard, soft, policy, complaint, unparsed, unmatched, ...).")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.pass_context
def list_cmd(ctx, address, kind, limit, as_json) -> None:
    """Recent bounce and complaint events, newest first, with what was done about each."""
    from pipeline.bounces import evidence, rates

    settings, engine = _open(ctx)
    rows = evidence.events(engine, settings, address, kind, limit)
    for r in rows:
        if as_json:
            click.echo(json.dumps(r, ensure_ascii=False))
        else:
            click.echo(f"{r['id']:>6}  {r['received_at'][:19]}  {r['source']:<16} {r['kind']:<10} {r['action']:<12} "
                       f"{r['email'] or '-'}  {r['status'] or ''} {(r['diagnostic'] or '')[:80]}")
    if not as_json:
        totals = rates.counts(engine)
        click.echo("totals: " + (", ".join(f"{k} {v}" for k, v in sorted(totals.items())) or "no events"))


@bounces.command("show")
@click.argument("event_id", type=int)
@click.pass_context
def show(ctx, event_id: int) -> None:
    """One event as JSON, with its raw notification (while kept) and the address's suppression now."""
    from pipeline.bounces import evidence

    settings, engine = _open(ctx)
    found = evidence.show(engine, settings, event_id)
    if found.get("email"):
        found["releases"] = evidence.releases(engine, settings, found["email"])
    click.echo(json.dumps(found, indent=2, ensure_ascii=False))


@bounces.command("release")
@click.argument("address")
@click.option("--reason", required=True, help="Why the suppression was wrong (kept with the audit record).")
@click.option("--by", "by", default=None, help="Who releases it (default: the login name).")
@click.pass_context
def release(ctx, address: str, reason: str, by: str | None) -> None:
    """Undo a bounce suppression that was a false positive; audited (who, when, why)."""
    from pipeline.bounces import evidence

    settings, engine = _open(ctx)
    who = by or os.environ.get("SUDO_USER") or _login()
    done = evidence.release(engine, settings, address, by=who, reason=reason)
    click.echo(f"released {address}: {done['lifted']} suppression lifted, status now {done['status'] or 'not held'} "
               f"(by {who}, audit #{done['release']})")


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


@bounces.command("prune")
@click.pass_context
def prune(ctx) -> None:
    """Forget raw notifications older than bounce_raw_days (done after every ingest as well)."""
    from pipeline.bounces.process import prune as prune_raw

    settings, engine = _open(ctx)
    click.echo(f"{prune_raw(engine, settings)} raw notification(s) pruned")
