"""Admin pages: staff accounts (the same ``pipeline.staff.accounts`` functions as
``newsletter staff``: list, add with roles, disable, reset password; each audited in
the same transaction as its change) and a read-only view of every setting, its value
and where it came from (a secret is only ever "set" or "not set")."""
from __future__ import annotations

from pipeline import clock
from pipeline.errors import StaffError
from pipeline.staff.models import ROLES


async def staff_page(console, request, error: str | None = None, status: int = 200):
    from pipeline.staff import accounts

    session = console.signed_in(request, "admin", "manage staff accounts")
    now = clock.now()
    rows = []
    for s in accounts.all_staff(console.engine):
        state = "disabled" if s.disabled else ("locked" if s.locked_until and s.locked_until > now else "active")
        rows.append({"staff": s, "state": state})
    return console.page(request, "staff.html", session, status=status, rows=rows, roles=ROLES, error=error,
                        done=request.query_params.get("done"))


async def staff_action(console, request):
    from pipeline.staff import accounts

    session = console.signed_in(request, "admin", "manage staff accounts")
    form = await console.form(request, session)
    action = request.path_params["action"]
    who = dict(actor=session.staff.email, via="web", ip=console.ip(request))
    email = str(form.get("email") or "").strip()[:320]
    roles = [str(r) for r in form.getlist("role")]
    try:
        if action == "add":
            if form.get("password") != form.get("password2"):
                raise StaffError("the two passwords differ; nothing was changed")
            accounts.add(console.engine, email, name=str(form.get("name") or ""), roles=roles,
                         password=str(form.get("password") or ""), credentials=str(form.get("credentials") or ""),
                         **who)
        elif action == "disable":
            if email.lower() == session.staff.email.lower():
                raise StaffError("you cannot disable your own account here (another admin, or `newsletter staff "
                                 "disable`, can)")
            accounts.disable(console.engine, email, **who)
        elif action == "reset":
            if form.get("password") != form.get("password2"):
                raise StaffError("the two passwords differ; nothing was changed")
            accounts.reset(console.engine, email, str(form.get("password") or ""), roles=roles or None, **who)
        else:
            return console.refused(request, session, "No such staff action.", 404)
    except StaffError as exc:
        return await staff_page(console, request, error=str(exc), status=400)
    return console.redirect(f"/staff?done={action}")


def settings_rows(settings) -> list[dict]:
    """Every setting: name, shown value, where it came from, help.  A secret's value is
    never shown: only whether it is set."""
    from pipeline.settings import SETTINGS

    rows = []
    for s in SETTINGS:
        value = settings[s.name]
        if s.secret:
            shown = "set" if value else "not set"
        else:
            shown = repr(value) if not isinstance(value, str) else value
            if len(shown) > 300:
                shown = shown[:299] + "…"
        rows.append({"name": s.name, "value": shown, "secret": s.secret, "origin": settings.origin(s.name),
                     "help": s.help})
    return rows


async def settings_page(console, request):
    session = console.signed_in(request, "admin", "read the settings")
    return console.page(request, "settings.html", session, rows=settings_rows(console.settings))


ROUTES = [
    ("/staff", staff_page, ["GET"]),
    ("/staff/{action}", staff_action, ["POST"]),
    ("/settings", settings_page, ["GET"]),
]
