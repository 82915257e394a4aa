"""Console pages: the library (check and review status, last sends), medical sign-off,
the calendar (the same ``plan_day`` rows and ``editing`` operations as ``newsletter
schedule``), subscriber counts with the admin's exact look-up, and the audit log."""
from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timedelta

from sqlalchemy import func, select

from pipeline.errors import NewsletterError
from pipeline.staff import audit

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _library(console):
    from pipeline.content.library import check_library
    return check_library(console.content_dir)


async def library_page(console, request):
    from pipeline.content.library import check_library
    from pipeline.review import reviews
    from pipeline.scheduling import calendar, slots

    session = console.signed_in(request)
    library, problems = check_library(console.content_dir)
    articles = list(library.articles) if library is not None else []
    found = reviews.statuses(console.engine, articles)
    sent: dict[str, list] = {}
    for entry in calendar.entries(console.engine, states=("sent",)):
        sent.setdefault(entry.slug, []).append(entry)
    by_file: dict[str, list] = {}
    for problem in problems:
        by_file.setdefault(str(problem.path), []).append(problem)
    rows = [{"article": a, "status": found[a.slug], "problems": by_file.pop(str(a.source), []),
             "sent": sorted(sent.get(a.slug, []), key=lambda e: e.day, reverse=True)} for a in articles]
    return console.page(request, "library.html", session, rows=rows, others=[p for ps in by_file.values() for p in ps],
                        healthy=library is not None, tz=slots.zone(console.settings), done=request.query_params.get("done"))


async def review_action(console, request):
    from pipeline.review import reviews

    session = console.signed_in(request, "reviewer", "sign off articles")
    form = await console.form(request, session)
    library, _ = _library(console)
    slug = request.path_params["slug"]
    try:
        if library is None:
            raise NewsletterError("the library has errors (see the list): fix them before signing off")
        article = library.article(slug)
        decision = reviews.APPROVED if form.get("decision") == "approve" else reviews.REJECTED
        reviews.decide(console.engine, session.staff, article, decision, str(form.get("comment") or ""),
                       via="web", ip=console.ip(request))
    except NewsletterError as exc:
        return console.refused(request, session, str(exc), 400)
    return console.redirect(f"/library?done={'approved' if decision == reviews.APPROVED else 'sent-back'}")


# -- the calendar -----------------------------------------------------------------------------------

def _day_param(value: str | None, default: date) -> date:
    try:
        return date.fromisoformat(value) if value else default
    except ValueError:
        return default


def calendar_context(console, request, view_name: str):
    from pipeline.scheduling import calendar, slots, view
    from pipeline.scheduling.plan import upcoming

    settings = console.settings
    days = 35 if view_name == "month" else 7
    library, _ = _library(console)
    rows = upcoming(console.engine, settings, days=days, library=library)
    tz = slots.zone(settings)
    shown = []
    for row in rows:
        shown.append({"day": row.slot.day, "weekday": WEEKDAYS[row.slot.day.weekday()], "kind": row.slot.kind,
                      "time": row.slot.instant.astimezone(tz).strftime("%H:%M %Z"),
                      "articles": view.articles_text(row), "state": view.state_text(row),
                      "awaiting": row.awaiting_review, "problem": row.problem})
    pause = calendar.get_pause(console.engine)
    slugs = [a.slug for a in library.articles] if library is not None else []
    weeks = []
    if view_name == "month":
        first = slots.today(settings)
        start = first - timedelta(days=first.weekday())
        by_day: dict[date, list] = {}
        for item in shown:
            by_day.setdefault(item["day"], []).append(item)
        for w in range(6):
            week = [(start + timedelta(days=7 * w + d)) for d in range(7)]
            if week[0] > first + timedelta(days=days - 1):
                break
            weeks.append([(d, by_day.get(d, [])) for d in week])
    return dict(rows=shown, weeks=weeks, view_name=view_name, pause=pause, slugs=slugs,
                today=slots.today(settings), timezone=settings.timezone, weekdays=WEEKDAYS)


async def calendar_page(console, request, error: str | None = None, status: int = 200):
    session = console.signed_in(request)
    view_name = "month" if request.query_params.get("view") == "month" else "week"
    return console.page(request, "calendar.html", session, status=status, error=error,
                        done=request.query_params.get("done"), **calendar_context(console, request, view_name))


async def calendar_action(console, request):
    from pipeline.scheduling import editing, slots

    session = console.signed_in(request, "editor", "change the calendar")
    form = await console.form(request, session)
    action = request.path_params["action"]
    who = dict(actor=session.staff.email, via="web", ip=console.ip(request))
    settings, engine = console.settings, console.engine
    slug = str(form.get("slug") or "").strip()
    at = str(form.get("at") or "").strip() or None
    try:
        if action == "add":
            editing.add_article(engine, settings, console.content_dir, slug,
                                slots.parse_day(str(form.get("day") or ""), "date"), at, **who)
        elif action == "move":
            editing.move_article(engine, settings, console.content_dir, slug,
                                 slots.parse_day(str(form.get("day") or ""), "date"), at, **who)
        elif action == "cancel":
            editing.cancel_article(engine, slug, **who)
        elif action == "pause":
            until = str(form.get("until") or "").strip()
            editing.pause(engine, settings, slots.parse_day(until, "until") if until else None, **who)
        elif action == "resume":
            editing.resume(engine, **who)
            from pipeline.delivery import stops
            stops.release(engine)
        else:
            return console.refused(request, session, "No such calendar action.", 404)
    except NewsletterError as exc:
        return await calendar_page(console, request, error=str(exc), status=400)
    return console.redirect(f"/calendar?done={action}")


# -- subscribers: counts only, and one exact look-up for admins ----------------------------------------

def subscriber_counts(engine, settings):
    from pipeline import clock
    from pipeline.database import transaction
    from subscribers.models import Subscriber, SubscriberTopic

    with transaction(engine) as session:
        status = dict(session.execute(select(Subscriber.status, func.count()).group_by(Subscriber.status)).all())
        confirmed = Subscriber.status == "confirmed"
        frequency = dict(session.execute(select(Subscriber.frequency, func.count()).where(confirmed)
                                         .group_by(Subscriber.frequency)).all())
        topics = dict(session.execute(select(SubscriberTopic.topic, func.count()).join(Subscriber)
                                      .where(confirmed).group_by(SubscriberTopic.topic)).all())
        since = clock.now() - timedelta(weeks=8)
        joined = session.execute(select(Subscriber.confirmed_at).where(Subscriber.confirmed_at >= since)).scalars().all()
    week0 = clock.now().date() - timedelta(days=clock.now().date().weekday())
    growth = Counter((week0 - (d.date() - timedelta(days=d.date().weekday()))).days // 7 for d in joined)
    weeks = [{"start": week0 - timedelta(weeks=n), "count": growth.get(n, 0)} for n in range(7, -1, -1)]
    top = max([w["count"] for w in weeks] + [1])
    names = {t: (spec or {}).get("name", t) for t, spec in (settings.topics or {}).items()}
    return dict(by_status=status, frequency=frequency, topics=[(names.get(t, t), topics.get(t, 0)) for t in names],
                weeks=weeks, top=top)


async def subscribers_page(console, request, found=None, error=None, status: int = 200):
    session = console.signed_in(request)
    return console.page(request, "subscribers.html", session, status=status, found=found, error=error,
                        **subscriber_counts(console.engine, console.settings))


async def subscriber_lookup(console, request):
    from subscribers import store

    session = console.signed_in(request, "admin", "look up a subscriber")
    form = await console.form(request, session)
    address = str(form.get("email") or "").strip()[:320]
    try:
        info = store.get_by_email(console.engine, address) if address else None
    except NewsletterError:  # not an address at all: no match
        info = None
    audit.write(console.engine, session.staff.email, "subscriber.lookup",
                f"subscriber #{info.id}" if info else "(no match)", via="web", ip=console.ip(request))
    if info is None:
        return await subscribers_page(console, request, error="No subscriber has exactly that address.")
    return await subscribers_page(console, request, found=info)


# -- the audit log ---------------------------------------------------------------------------------------

async def audit_page(console, request):
    from pipeline.scheduling.slots import zone

    session = console.signed_in(request, "admin", "read the audit log")
    query = request.query_params
    since = None
    if query.get("since"):
        try:
            since = datetime.combine(date.fromisoformat(query["since"]), datetime.min.time(), zone(console.settings))
        except ValueError:
            since = None
    rows = audit.entries(console.engine, since=since, actor=(query.get("actor") or "").strip()[:320] or None,
                         action=(query.get("action") or "").strip()[:64] or None, limit=500)
    return console.page(request, "audit.html", session, rows=list(reversed(rows)), tz=zone(console.settings),
                        actor=query.get("actor", ""), action=query.get("action", ""), since=query.get("since", ""))


ROUTES = [
    ("/library", library_page, ["GET"]),
    ("/review/{slug}", review_action, ["POST"]),
    ("/calendar", calendar_page, ["GET"]),
    ("/calendar/{action}", calendar_action, ["POST"]),
    ("/subscribers", subscribers_page, ["GET"]),
    ("/subscribers/lookup", subscriber_lookup, ["POST"]),
    ("/audit", audit_page, ["GET"]),
]
