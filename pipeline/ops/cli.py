"""``newsletter status`` (what is happening, what needs an operator) and
``newsletter stop`` (the emergency stop of a send under way)."""
from __future__ import annotations

import json
import time
from datetime import datetime

import click
from rich.console import Console
from rich.table import Table

from pipeline.scheduling import calendar
from pipeline.delivery import stops
from pipeline.scheduling import slots
from pipeline.scheduling.editing import sending_days
from pipeline import clock, exits
from pipeline.errors import ScheduleError


def _console() -> Console:
    # wide enough for the tables; a longer line wraps, and nothing is ever cut
    return Console(width=160, soft_wrap=False)


def _engine(settings):
    from pipeline.database import open_database
    return open_database(settings.database_url)


def _ago(when: datetime) -> str:
    seconds = int((clock.now() - when).total_seconds())
    return f"{seconds} s ago" if seconds < 120 else f"{seconds // 60} min ago"


def _hm(when: datetime | None, tz) -> str:
    return f"{when.astimezone(tz):%H:%M}" if when else "-"


@click.command("status")
@click.option("--next", "next_count", default=5, show_default=True, help="How many coming sends to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON (schema in pipeline/ops/status.py).")
@click.option("--ack", "ack", default=None, metavar="YYYY-MM-DD",
              help="Acknowledge that day's alerts (they stop alerting), then report.")
@click.pass_obj
def status(obj, next_count: int, as_json: bool, ack: str | None) -> None:
    """Daemons, leases, next sends, last sends with live counts, alerts, the queue.

    Exits 2 while there is an alert (see the README's exit codes)."""
    from pipeline.ops import status as model
    from pipeline.content.library import check_library

    settings = obj.settings()
    engine = _engine(settings)
    if ack:
        day = slots.parse_day(ack, "--ack")
        done = calendar.acknowledge(engine, day)
        if not done:
            raise ScheduleError(f"nothing alerts for {day.isoformat()}: nothing to acknowledge")
        if not as_json:
            click.echo(f"acknowledged: {', '.join(f'{r.kind} issue of {r.day.isoformat()} ({r.state})' for r in done)}")
    library, _problems = check_library(obj.content_dir)
    report = model.build(engine, settings, library, next_count=next_count)
    bounce_rows, bounce_alerts = model.bounce_report(engine, settings)
    code = report.exit_code or (exits.ALERT if bounce_alerts else exits.OK)
    if as_json:
        from subscribers import mailqueue
        doc = report.to_json()
        doc["exit_code"] = code
        doc["alerts"] = doc["alerts"] + [{"day": None, "kind": "bounces", "state": "alert", "message": m}
                                         for m in bounce_alerts]
        click.echo(json.dumps({**doc, "mail_queue": mailqueue.summary(engine), "bounces": bounce_rows}, indent=2,
                              ensure_ascii=False))
        raise SystemExit(code)
    _print(report, settings, engine)
    _print_bounces(bounce_rows, engine)
    for alert in report.alerts:
        click.echo(f"ALERT: {alert.message}", err=True)
    for message in bounce_alerts:
        click.echo(f"ALERT: {message}", err=True)
    if code:
        raise SystemExit(code)


def _print_bounces(rows: list[dict], engine) -> None:
    from pipeline.bounces.rates import counts

    kept = {k: v for k, v in counts(engine).items() if k in ("unparsed", "unmatched")}
    if kept:  # kept and counted, never guessed at: someone should look
        _console().print("bounce mail nobody could act on: " + ", ".join(f"{v} {k}" for k, v in sorted(kept.items()))
                         + " (newsletter bounces list --kind unparsed|unmatched)")
    if not rows:
        return
    table = Table("issue", "recipients", "bounces", "bounce rate", "complaints", "complaint rate", "policy",
                  title="Bounces and complaints")
    for r in rows:
        table.add_row(r["issue"], str(r["recipients"]), str(r["bounces"]), f"{r['bounce_rate']:.2f}%",
                      str(r["complaints"]), f"{r['complaint_rate']:.2f}%", str(r["policy"]))
    _console().print(table)


def _print(report, settings, engine) -> None:
    console = _console()
    tz = slots.zone(settings)
    if not any(d.alive for d in report.daemons):
        # the lines below say what became of any daemon seen lately (dead, silent)
        console.print("daemon: not running")
    for d in report.daemons:
        if d.state == "running":
            console.print(f"daemon: running (pid {d.pid} on {d.host}, last seen {_ago(d.last_seen)})")
        elif d.state == "dead":
            console.print(f"daemon: dead (pid {d.pid} on {d.host} has exited; last seen {_ago(d.last_seen)})")
        else:
            console.print(f"daemon: silent (pid {d.pid} on {d.host}, last seen {_ago(d.last_seen)})")
    for lease in report.leases:
        if lease.alive:
            console.print(f"lease {lease.name}: held by {lease.holder} until {_hm(lease.expires_at, tz)}")
    console.print(f"sending: paused{' until ' + report.pause_until.isoformat() if report.pause_until else ''}"
                  if report.paused else "sending: active")

    table = Table("date", "send time", "kind", "articles", title="Next sends")
    for n in report.next:
        articles = ", ".join(n.articles) if n.articles else (
            "weekly digest" if n.kind == "weekly" else
            "(next in queue)" if settings.send_when_nothing_due else "nothing due")
        table.add_row(n.day.isoformat(), f"{n.at:%H:%M %Z}", n.kind, articles)
    console.print(table)

    table = Table("date", "kind", "state", "sent", "deferred", "uncertain", "failed", "bounced", "in flight", "of",
                  "planned", "started", "subject", title="Last sends")
    for r in report.runs:
        c = r.counts
        state = r.state + (" (late)" if r.late else "") + (" ALERT" if r.alert else "")
        table.add_row(r.day.isoformat(), r.kind, state, str(c.get("sent", 0)),
                      str(c.get("deferred", 0) + c.get("queued", 0)), str(c.get("uncertain", 0)),
                      str(c.get("failed", 0)), str(c.get("bounced", 0)), str(c.get("sending", 0)),
                      str(c.get("total", 0)), _hm(r.planned_at, tz), _hm(r.started_at, tz), r.subject or "")
    console.print(table)
    if report.senders:  # the nodes of the newest shared sends (PostgreSQL) and each one's count
        table = Table("issue", "node", "state", "sent", "holding", "joined", title="Senders")
        for n in report.senders:
            state = "sending" if n.live else (n.ended or "gone")
            table.add_row(n.issue, f"pid {n.pid} on {n.host}", state, str(n.sent), str(n.holding), _hm(n.joined_at, tz))
        console.print(table)
    notes = [r for r in report.runs if r.note]
    if notes:
        console.print("Notes:")
        for r in notes:  # whole, never cut: the fix command is usually at the end
            console.print(f"  {r.day.isoformat()} {r.kind}: {r.note}", overflow="fold")

    for key, waves in report.waves:  # issues going out at each reader's local time
        console.print(f"waves of issue {key}:")
        for w in waves:
            when = _wave_time(w.instant, tz)
            left = f"{w.open} to come" if not w.released else f"released, {w.sent} of {w.total} sent" + (
                f", {w.open} open" if w.open else "")
            console.print(f"  {when}: {left}" + (f" (of {w.total})" if not w.released else ""))
    from subscribers.mailqueue import status_line
    console.print(status_line(engine))  # transactional mail (sign-ups) waiting for the relay
    if not report.queue_known:
        console.print("queue: unknown (the library has errors: run `newsletter check`)")
    else:
        console.print(f"queue: {len(report.queue)} unsent article(s)"
                      + ("" if settings.send_when_nothing_due else
                         " (sent only when scheduled: send_when_nothing_due is off)"))
        for slug, day in report.queue:
            console.print(f"  {slug}  ({'scheduled ' + day.isoformat() if day else 'unscheduled'})")


def _wave_time(instant, tz) -> str:
    return "at once" if instant is None else f"{instant.astimezone(tz):%Y-%m-%d %H:%M %Z}"


def model_window(settings):
    from pipeline.ops.status import alive_window
    return alive_window(settings)


# -- newsletter stop ------------------------------------------------------------------------------

@click.command("stop")
@click.option("--date", "day", default=None, metavar="YYYY-MM-DD", help="Stop only that day's send (default: every send under way).")
@click.option("--by", "by", default=None, help="Who stops it, for the record (default: your user name).")
@click.option("--wait", "wait", default=None, type=float, metavar="SECONDS",
              help="How long to wait for the send to stop (default: smtp_timeout + 15 s).")
@click.pass_obj
def stop(obj, day: str | None, by: str | None, wait: float | None) -> None:
    """Stop a send under way: no new message starts, and the replies in flight are
    waited for and recorded, so nothing is left uncertain.

    The rest stays queued; `newsletter send --date D --resume` finishes it."""
    settings = obj.settings()
    engine = _engine(settings)
    tz = slots.zone(settings)
    running = sending_days(engine)
    target = slots.parse_day(day, "--date") if day else None
    from pipeline.scheduling import wave_sends
    waiting = {d: k for d, k in wave_sends.waiting_days(engine).items()
               if d not in running and (target is None or d == target)}
    who = stops.operator(by)
    for d, key in sorted(waiting.items()):  # between waves: the ones not yet sent are held
        line = wave_sends.stop_waiting(engine, d, key, who, tz)
        click.echo(f"{d.isoformat()}: issue {key} {line}; `newsletter resume` or "
                   f"`newsletter send --date {d.isoformat()} --resume` lets them go")
    days = [target] if target is not None else sorted(running)
    if not days or (target is not None and target not in running):
        if not waiting:
            click.echo(f"nothing is being sent{' for ' + target.isoformat() if target else ''}; nothing to stop")
        return
    requests = {d: stops.request(engine, d, who) for d in days}
    click.echo(f"stopping the send of {', '.join(d.isoformat() for d in days)} (no new message; waiting for the replies in flight)...")
    deadline = time.monotonic() + (wait if wait is not None else float(settings.smtp_timeout) + 15.0)
    pending = dict(requests)
    while pending and time.monotonic() < deadline:
        time.sleep(0.2)
        running = sending_days(engine)
        for d, request in list(pending.items()):
            done = _honoured(engine, request.id)
            if done is not None and done.issue_key in running.get(d, []):
                continue  # one node stopped; the others of a shared send are still stopping
            if done is not None:
                click.echo(f"{d.isoformat()}: issue {done.issue_key} {done.describe(tz)}; "
                           f"`newsletter send --date {d.isoformat()} --resume` finishes it")
                del pending[d]
            elif d not in running:
                # it ended on its own first: nothing to stop, nothing to keep
                stops.release(engine, d)
                click.echo(f"{d.isoformat()}: the send had already ended; nothing was stopped")
                del pending[d]
    if pending:
        raise ScheduleError(f"the send of {', '.join(d.isoformat() for d in pending)} has not stopped yet; "
                            "the request stays: it stops before its next message (see `newsletter status`)")


def _honoured(engine, request_id: int):
    from sqlalchemy import select
    with engine.connect() as conn:
        row = conn.execute(select(stops.T).where(stops.T.c.id == request_id)).first()
    return stops._request(row) if row is not None and row.honoured_at is not None else None
