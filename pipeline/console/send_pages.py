"""Console pages about sending: the preview of a date's issue (as ``plan_day`` decides
it, exactly what ``newsletter preview --date`` renders) with a test send, the history
of sends, and the live view of one send (counts by ledger state, rate, ETA), whose
figures a small script polls from ``/admin/sends/{key}.json``."""
from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy import func, select
from starlette.responses import HTMLResponse, JSONResponse

from pipeline import clock
from pipeline.errors import NewsletterError
from pipeline.staff import audit
from pipeline.web.http import NO_STORE

# the issue's HTML in a frame of this console only; nothing in it may run or load
FRAME_HEADERS = {**NO_STORE, "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; "
                 "img-src https: data:; frame-ancestors 'self'; sandbox", "x-frame-options": "SAMEORIGIN"}


def _plan(console, query):
    """(rendered issue or None, why not) for ``?date=`` (the day's plan) or ``?article=``."""
    from pipeline.content.library import check_library
    from pipeline.rendering.compose import compose_issue
    from pipeline.rendering.render import render_issue
    from pipeline.review.reviews import attach
    from pipeline.scheduling import slots
    from pipeline.scheduling.plan import plan_day

    settings = console.settings
    library, _problems = check_library(console.content_dir)
    if library is None:
        return None, "The library has errors: see the library page."
    library = attach(console.engine, library)
    try:
        day = date.fromisoformat(query.get("date") or slots.today(settings).isoformat())
    except ValueError:
        return None, "That is not a date (YYYY-MM-DD)."
    try:
        if query.get("article"):
            issue = compose_issue(library, day, number=1, scheduled=[query["article"]])
        else:
            plan = plan_day(console.engine, settings, library, day)
            if plan.issue is None:
                return None, plan.describe()
            issue = plan.issue
        return render_issue(issue, settings), None
    except NewsletterError as exc:
        return None, str(exc)


def _held(console, query) -> tuple[str, ...]:
    """The articles a day's issue is held for (awaiting review), for links to their own preview."""
    from pipeline.errors import ReviewError
    from pipeline.content.library import check_library
    from pipeline.scheduling.plan import plan_day

    library, _ = check_library(console.content_dir)
    if library is None or query.get("article"):
        return ()
    try:
        plan_day(console.engine, console.settings, library, date.fromisoformat(query.get("date") or ""))
    except ReviewError as exc:
        return exc.slugs
    except (NewsletterError, ValueError):
        return ()
    return ()


async def preview_page(console, request):
    from pipeline.scheduling import slots
    from pipeline.staff.accounts import all_staff

    session = console.signed_in(request)
    rendered, why = _plan(console, request.query_params)
    query = "&".join(f"{k}={v}" for k, v in request.query_params.items() if k in ("date", "article"))
    staff = [s.email for s in all_staff(console.engine) if not s.disabled]
    return console.page(request, "preview.html", session, rendered=rendered, why=why, query=query,
                        day=request.query_params.get("date") or slots.today(console.settings).isoformat(),
                        article=request.query_params.get("article", ""), staff=staff,
                        held=_held(console, request.query_params) if rendered is None else (),
                        size=len(rendered.html.encode("utf-8")) if rendered else 0, done=request.query_params.get("done"))


async def preview_frame(console, request):
    console.signed_in(request)
    rendered, why = _plan(console, request.query_params)
    body = rendered.html if rendered else f"<!DOCTYPE html><title>No issue</title><p>{why and why.replace('<', '&lt;')}</p>"
    return HTMLResponse(body, headers=FRAME_HEADERS)


async def test_send(console, request):
    from pipeline.delivery.send_test_copy import send_test
    from pipeline.staff.accounts import all_staff

    session = console.signed_in(request, "editor", "send a test")
    form = await console.form(request, session)
    to = str(form.get("to") or session.staff.email)
    if to not in {s.email for s in all_staff(console.engine) if not s.disabled}:
        return console.refused(request, session, "A test goes to a staff address only.", 400)
    rendered, why = _plan(console, {k: str(form.get(k)) for k in ("date", "article") if form.get(k)})
    if rendered is None:
        return console.refused(request, session, why or "Nothing to send.", 400)
    try:
        (console.send_test or send_test)(console.settings, rendered, to)
    except NewsletterError as exc:
        return console.refused(request, session, f"The test was not sent: {exc}", 502)
    audit.write(console.engine, session.staff.email, "send.test", rendered.issue.key, after={"to": to},
                via="web", ip=console.ip(request))
    back = f"date={form.get('date') or ''}" + (f"&article={form.get('article')}" if form.get("article") else "")
    return console.redirect(f"/preview?{back}&done=test-sent")


# -- sends -----------------------------------------------------------------------------------------

def live_figures(engine, key: str) -> dict:
    """Counts by ledger state, the rate over the last minute and the ETA of one issue."""
    from pipeline.delivery import ledger
    from pipeline.ops.status import ledger_states

    counts = {state: 0 for state in ("total",) + ledger.DELIVERY_STATES}
    counts.update(ledger_states(engine, [key]).get(key, {}))
    now = clock.now()
    with engine.connect() as conn:
        recent = conn.execute(select(func.count()).select_from(ledger.DELIVERIES)
                              .join(ledger.ISSUES, ledger.DELIVERIES.c.issue_id == ledger.ISSUES.c.id)
                              .where(ledger.ISSUES.c.key == key, ledger.DELIVERIES.c.state == ledger.SENT,
                                     ledger.DELIVERIES.c.updated_at >= now - timedelta(minutes=1))).scalar_one()
        state = conn.execute(select(ledger.ISSUES.c.state).where(ledger.ISSUES.c.key == key)).scalar()
    rate = recent / 60.0
    left = sum(counts.get(s, 0) for s in ("queued", "sending", "deferred"))
    eta = int(left / rate) if rate > 0 and left else None
    return {"key": key, "state": state, "counts": counts, "rate_per_second": round(rate, 2),
            "remaining": left, "eta_seconds": eta, "done": state in ("sent", "unfinished", "stopped") or not left}


async def sends_page(console, request):
    from pipeline.ops import status

    session = console.signed_in(request)
    info = status.build(console.engine, console.settings, recent=30)
    return console.page(request, "sends.html", session, info=info)


def _mask(address: str | None) -> str:
    if not address or "@" not in address:
        return "(erased)"
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}•••@{domain}"


async def send_page(console, request):
    from pipeline.delivery import ledger

    session = console.signed_in(request)
    key = request.path_params["key"][:64]
    figures = live_figures(console.engine, key)
    if figures["state"] is None:
        return console.refused(request, session, "No send with that issue key.", 404)
    with console.engine.connect() as conn:
        problems = conn.execute(select(ledger.DELIVERIES.c.email, ledger.DELIVERIES.c.state,
                                       ledger.DELIVERIES.c.last_reply)
                                .join(ledger.ISSUES, ledger.DELIVERIES.c.issue_id == ledger.ISSUES.c.id)
                                .where(ledger.ISSUES.c.key == key,
                                       ledger.DELIVERIES.c.state.in_(("failed", "bounced", "deferred")))
                                .limit(200)).all()
    admin = session.staff.has("admin")
    rows = [{"email": email if admin else _mask(email), "state": state, "reply": reply or ""}
            for email, state, reply in problems]
    retry = console.retries.get(key)
    return console.page(request, "send.html", session, figures=figures, rows=rows,
                        retry=retry.public() if retry else None, done=request.query_params.get("done"))


async def send_json(console, request):
    console.signed_in(request)
    key = request.path_params["key"][:64]
    figures = live_figures(console.engine, key)
    retry = console.retries.get(key)
    figures["retry"] = retry.public() if retry else None
    if retry is not None and retry.running:
        figures["done"] = False  # keep polling while the retry runs
    return JSONResponse(figures, headers=NO_STORE)


async def retry_action(console, request):
    """Retry the issue's deferred rows: ``newsletter send ... --resume`` in a child process."""
    session = console.signed_in(request, "editor", "retry a send")
    await console.form(request, session)
    key = request.path_params["key"][:64]
    try:
        console.retries.start(console, key, actor=session.staff.email, ip=console.ip(request))
    except NewsletterError as exc:
        return console.refused(request, session, f"Not retried: {exc}", 409)
    return console.redirect(f"/sends/{key}?done=retry-started")


ROUTES = [
    ("/preview", preview_page, ["GET"]),
    ("/preview/frame", preview_frame, ["GET"]),
    ("/preview/test", test_send, ["POST"]),
    ("/sends", sends_page, ["GET"]),
    ("/sends/{key}.json", send_json, ["GET"]),
    ("/sends/{key}", send_page, ["GET"]),
    ("/sends/{key}/retry", retry_action, ["POST"]),
]
