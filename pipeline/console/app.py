"""The console's ASGI app (mounted at ``/admin`` under base_url by ``serve`` and ``run``).

``Console`` holds what every page needs (settings, engine, content folder, templates)
and the gatekeeping: ``signed_in`` sends a signed-out request to the sign-in page
(303) and refuses a role the staff member lacks (403); ``form`` reads a POST and
refuses it (403, nothing done) without the session's CSRF token or with a foreign
``Origin``.  Every change redirects afterwards (POST-redirect-GET).  The pages
themselves are in ``pipeline/console/pages.py``, ``send_pages.py`` (with ``retry.py``),
``admin_pages.py`` (staff and settings) and ``correction_pages.py``.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from pipeline import clock
from pipeline.console import sessions
from pipeline.errors import StaffError
from pipeline.staff import accounts
from pipeline.web.http import MAX_BODY, NO_STORE

TEMPLATES = Path(__file__).resolve().parent.parent.parent / "templates" / "console"
STATIC = TEMPLATES / "static"
PREFIX = "/admin"
# same-origin: the browser then sends the Origin that every form post is checked against
# (under the service's no-referrer it would send "Origin: null")
PAGE_HEADERS = {**NO_STORE, "referrer-policy": "same-origin"}


class Refused(Exception):
    """A request answered with ``response`` instead of the page (signed out, no role, CSRF)."""

    def __init__(self, response: Response):
        self.response = response


class Console:
    def __init__(self, settings, engine, content_dir: Path | str, *, send_test=None):
        self.settings, self.engine, self.content_dir = settings, engine, Path(content_dir)
        self.send_test = send_test
        from pipeline.console.retry import Retries
        self.retries = Retries()  # "retry deferred rows" child processes, by issue key
        self.env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                               undefined=StrictUndefined)
        self.env.globals.update(url=self.url, settings=settings)
        parts = urlsplit(settings.base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.cookie_path = (settings.base_path + PREFIX) or PREFIX

    # -- addresses and answers --------------------------------------------------------------

    def url(self, path: str = "/") -> str:
        return self.settings.url(PREFIX + path)

    def page(self, request: Request, template: str, session=None, *, status: int = 200, **context) -> HTMLResponse:
        body = self.env.get_template(template).render(
            session=session, csrf=session.csrf(self.settings) if session else "", now=clock.now(),
            path=request.url.path, **context)
        return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)

    def redirect(self, path: str) -> RedirectResponse:
        return RedirectResponse(self.url(path), status_code=303, headers=NO_STORE)

    def refused(self, request: Request, session, message: str, status: int = 403) -> HTMLResponse:
        return self.page(request, "message.html", session, status=status, title="Not allowed", message=message)

    # -- who is asking ----------------------------------------------------------------------------

    def session_of(self, request: Request):
        return sessions.find(self.engine, self.settings, request.cookies.get(sessions.COOKIE))

    def signed_in(self, request: Request, role: str | None = None, what: str = "do this"):
        session = self.session_of(request)
        if session is None:
            raise Refused(self.redirect("/login"))
        if role is not None and not session.staff.has(role):
            raise Refused(self.refused(request, session, f"You cannot {what}: that needs the {role} role "
                                                         f"(yours: {', '.join(session.staff.roles)})."))
        return session

    async def form(self, request: Request, session):
        """The POSTed form, once its CSRF token and Origin hold."""
        origin = request.headers.get("origin")
        if origin is not None and origin != self.origin:
            raise Refused(self.refused(request, session, "This form came from another site; nothing was done."))
        try:
            form = await request.form(max_files=0, max_fields=50, max_part_size=MAX_BODY)
        except Exception:  # malformed bodies: refused, not a 500
            raise Refused(self.refused(request, session, "The form could not be read; nothing was done.", 400))
        if not session.csrf_ok(self.settings, form.get("csrf")):
            raise Refused(self.refused(request, session, "The form has expired or did not come from this console "
                                                         "(reload the page and try again); nothing was done."))
        return form

    @staticmethod
    def ip(request: Request) -> str | None:
        return request.client.host if request.client else None

    # -- signing in and out --------------------------------------------------------------------

    def _set(self, response: Response, name: str, value: str, max_age: int | None) -> None:
        response.set_cookie(name, value, max_age=max_age, path=self.cookie_path, secure=True, httponly=True,
                            samesite="strict")

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self._login_page(request)
        nonce = request.cookies.get(sessions.PRE_COOKIE)
        try:
            form = await request.form(max_files=0, max_fields=10, max_part_size=4096)
        except Exception:
            return self._login_page(request, "The form could not be read.", 400)
        if not sessions.login_token_ok(self.settings, nonce, form.get("csrf")) or \
                request.headers.get("origin") not in (None, self.origin):
            return self._login_page(request, "The sign-in form expired; please try again.", 403)
        try:
            staff = accounts.authenticate(self.engine, self.settings, str(form.get("email") or ""),
                                          str(form.get("password") or ""), via="web", ip=self.ip(request))
        except StaffError as exc:
            return self._login_page(request, str(exc), 401)
        # a new session whatever cookie came in: a planted one is never promoted (fixation)
        old = self.session_of(request)
        if old is not None:
            sessions.end(self.engine, old.id)
        response = self.redirect("/")
        self._set(response, sessions.COOKIE, sessions.start(self.engine, self.settings, staff, self.ip(request)), None)
        response.delete_cookie(sessions.PRE_COOKIE, path=self.cookie_path, secure=True, httponly=True,
                               samesite="strict")
        return response

    def _login_page(self, request: Request, error: str | None = None, status: int = 200) -> Response:
        nonce, token = sessions.login_token(self.settings)
        response = self.page(request, "login.html", None, status=status, error=error, login_csrf=token)
        self._set(response, sessions.PRE_COOKIE, nonce, 7200)
        return response

    async def logout(self, request: Request) -> Response:
        session = self.signed_in(request)
        await self.form(request, session)
        sessions.end(self.engine, session.id)
        from pipeline.staff import audit
        audit.write(self.engine, session.staff.email, "signout", session.staff.email, via="web", ip=self.ip(request))
        response = self.redirect("/login")
        response.delete_cookie(sessions.COOKIE, path=self.cookie_path, secure=True, httponly=True, samesite="strict")
        return response

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise HTTPException(404)
        kind = {"css": "text/css", "js": "text/javascript"}.get(name.rsplit(".", 1)[-1], "application/octet-stream")
        return Response(path.read_bytes(), media_type=kind, headers={"cache-control": "no-cache"})


def create_console(settings, engine, content_dir: Path | str, *, send_test=None) -> Starlette:
    """The console app; mount it at ``/admin`` of the web service (``create_app(admin=...)``)."""
    from pipeline.console import admin_pages, correction_pages, pages, send_pages

    console = Console(settings, engine, content_dir, send_test=send_test)

    def guarded(handler):
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(console, request)
            except Refused as refused:
                return refused.response
        return endpoint

    async def home(request: Request) -> Response:
        console.signed_in(request)
        return console.redirect("/library")

    routes = [
        Route("/", guarded(lambda c, r: home(r)), methods=["GET"]),
        Route("/login", console.login, methods=["GET", "POST"]),
        Route("/logout", guarded(lambda c, r: c.logout(r)), methods=["POST"]),
        Route("/static/{name}", console.static, methods=["GET"]),
        *[Route(path, guarded(handler), methods=methods) for path, handler, methods in pages.ROUTES],
        *[Route(path, guarded(handler), methods=methods) for path, handler, methods in send_pages.ROUTES],
        *[Route(path, guarded(handler), methods=methods) for path, handler, methods in admin_pages.ROUTES],
        *[Route(path, guarded(handler), methods=methods) for path, handler, methods in correction_pages.ROUTES],
    ]
    app = Starlette(routes=routes)
    app.router.redirect_slashes = False
    app.state.console = console
    return app
