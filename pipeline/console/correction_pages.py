"""Corrections in the console: "Correct" and "Retract" on the library page, through the
same ``pipeline.site.corrected.publish`` as ``newsletter correct|retract`` (the same
refusals, as one line; the record and its audit row in one transaction; the site
rebuilt), and the list of corrections ``newsletter corrections`` prints."""
from __future__ import annotations

from sqlalchemy import select

from pipeline.errors import NewsletterError


async def correct_action(console, request):
    from pipeline.content.library import load_library
    from pipeline.corrections import records
    from pipeline.scheduling.slots import today
    from pipeline.site.corrected import publish

    from pipeline.content.library import LibraryError

    session = console.signed_in(request, "editor", "correct or retract articles")
    action = request.path_params["action"]
    if action not in ("correct", "retract"):
        return console.refused(request, session, "No such action.", 404)
    kind = records.RETRACTION if action == "retract" else records.CORRECTION
    form = await console.form(request, session)
    slug = request.path_params["slug"][:200]
    try:
        library = load_library(console.content_dir, console.settings)
        correction, _ = publish(console.engine, library, slug, str(form.get("note") or ""), kind=kind,
                                significant=kind == records.RETRACTION or form.get("significant") == "yes",
                                by=session.staff.signature, actor=session.staff.email, via="web",
                                ip=console.ip(request), today=today(console.settings))
    except LibraryError:
        return console.refused(request, session, "Nothing was recorded: the library has errors (see the library "
                                                 "page); fix them first.", 400)
    except NewsletterError as exc:
        return console.refused(request, session, f"Nothing was recorded: {exc}", 400)
    return console.redirect(f"/corrections?done={correction.kind}-{correction.id}")


def listing_rows(console, slug: str | None = None) -> list[dict]:
    """The rows of ``newsletter corrections``: each correction with its notice's state."""
    from pipeline.corrections import records
    from pipeline.corrections.notice_mail import KIND
    from pipeline.delivery import ledger

    rows = records.listing(console.engine, slug)
    with console.engine.connect() as conn:
        notices = {r.number: r for r in conn.execute(select(ledger.ISSUES).where(ledger.ISSUES.c.kind == KIND))}
    out = []
    for row in rows:
        sent = notices.get(row.id)
        notice = None
        if row.notifies:
            if sent is None:
                notice = {"key": None, "state": "not sent", "sent": 0, "of": 0}
            else:
                counts = ledger.state_counts(console.engine, sent.id)
                notice = {"key": sent.key, "state": sent.state, "sent": counts[ledger.SENT], "of": sent.recipients or 0}
        out.append({"c": row, "notice": notice})
    return out


async def corrections_page(console, request):
    from pipeline.scheduling.slots import zone

    session = console.signed_in(request)
    return console.page(request, "corrections.html", session, rows=listing_rows(console),
                        tz=zone(console.settings), done=request.query_params.get("done"))


ROUTES = [
    ("/library/{slug}/{action:str}", correct_action, ["POST"]),
    ("/corrections", corrections_page, ["GET"]),
]
