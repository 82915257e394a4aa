"""The ASGI app: routes, error handlers, security headers; ``newsletter serve``."""
from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Callable

import click
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline import keys
from pipeline.bounces import webhooks
from pipeline.errors import ContentError
from pipeline.settings import Settings
from pipeline.web.http import MAX_BODY, Guard, SecurityHeaders, UnderPrefix, client_gone, forwarded_allow_ips
from pipeline.web.service import TEMPLATES, WebService


def create_app(settings: Settings, engine: Engine | None = None, *, send: Callable | None = None,
               public_dir: Path | str | None = None, static_app: ASGIApp | None = None,
               rate_per_minute: float | None = None, mail_worker: bool = True,
               admin: ASGIApp | None = None) -> ASGIApp:
    """The web service.  ``send(settings, EmailMessage)`` defaults to
    ``pipeline.mail.transport.send_single``; ``static_app`` to ``StaticSite(public_dir)``.
    With ``mail_worker`` the app sends the mail queue from a background thread
    (started with the app, or at the first mail queued).  ``admin`` (the editorial
    console, ``pipeline.console.app.create_console``) is mounted at ``/admin``."""
    from pipeline.database import open_database
    from pipeline.site.static_files import StaticSite
    from pipeline.mail.transport import send_single

    from pipeline.web import redact

    keys.secret(settings)  # fail at start, not at the first sign-up, when no secret is set
    redact.install()
    engine = engine if engine is not None else open_database(settings.database_url)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined)
    service = WebService(settings=settings, engine=engine, send=send or send_single, env=env,
                         rate_per_minute=None if rate_per_minute is None else int(rate_per_minute),
                         mail_worker=mail_worker)
    not_found = lambda: service.message("Not found", "There is no page at this address.", status=404)  # noqa: E731
    static = static_app or StaticSite(public_dir or settings.public_dir, base_url=settings.base_url,
                                      not_found=not_found)

    async def subscribe(request: Request):
        return await (service.post_subscribe if request.method == "POST" else service.get_subscribe)(request)

    async def confirm(request: Request):
        return await (service.confirm if request.method == "POST" else service.confirm_page)(request)

    # One Route per path with every method it takes, so that a 405 says exactly those in Allow.
    routes = [
        Route("/subscribe", subscribe, methods=["GET", "POST"]),
        Route("/subscribe/sent", service.subscribe_sent, methods=["GET"]),
        Route("/confirm/{token}", confirm, methods=["GET", "POST"]),
        Route("/unsubscribe/{token}", service.unsubscribe, methods=["GET", "POST"]),
        Route("/preferences/{token}", service.preferences, methods=["GET", "POST"]),
        Route("/preferences/{token}/data-link", service.data_link, methods=["POST"]),
        Route("/assets/{name}", service.asset, methods=["GET"]),
        Route("/data/{token}", service.data_page, methods=["GET"]),
        Route("/data/{token}/export", service.export, methods=["POST"]),
        Route("/data/{token}/erase", service.erase, methods=["POST"]),
        Route("/healthz", service.healthz, methods=["GET"]),
        Route("/readyz", service.readyz, methods=["GET"]),
        Mount("/webhooks", routes=webhooks.routes(settings, engine)),  # relays' bounce and complaint events
    ]
    if admin is not None:
        routes.append(Mount("/admin", app=admin))
    @asynccontextmanager
    async def lifespan(_app):
        service.start_worker()  # mail queued before a restart goes out now
        try:
            yield
        finally:
            service.stop_worker()

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: service.http_error, ClientDisconnect: client_gone,
                                        Exception: service.server_error})
    # No "add or drop the trailing slash" redirects: Starlette builds them from the Host
    # header.  The only redirects are StaticSite's folder ones, built from base_url.
    app.router.redirect_slashes = False
    app.router.default = StaticFallback(static)  # everything that is not a route: public/
    app.state.service = service
    too_large = lambda: service.message("Request too large", "What was sent is far larger than any of our "  # noqa: E731
                                        "forms; nothing was saved.", status=413)
    return SecurityHeaders(Guard(UnderPrefix(app, settings.base_path, not_found), MAX_BODY, too_large),
                           https=settings.base_url.startswith("https://"))


class StaticFallback:
    """``public/`` behind the routes: read-only, so any other method is the app's 405 page,
    except the CORS preflight (OPTIONS) of a feed file, which the static site answers."""

    def __init__(self, static: ASGIApp):
        self.static = static

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from pipeline.site.static_files import is_feed

        preflight = scope.get("method") == "OPTIONS" and is_feed(scope.get("path", ""))
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD") and not preflight:
            raise HTTPException(405, headers={"Allow": "GET, HEAD"})
        await self.static(scope, receive, send)


def root_path_for(settings: Settings, root_path: str | None) -> str:
    """uvicorn's root_path: '' (the app answers under base_url's path itself) or base_url's
    path, for a proxy that strips it; anything else would build links that lead nowhere."""
    wanted = (settings.web_root_path if root_path is None else root_path).rstrip("/")
    if wanted and wanted != settings.base_path:
        raise ContentError(f"--root-path {wanted} does not match base_url's path "
                              f"({settings.base_path or 'none'}); links are built from base_url")
    return wanted


@click.command("serve")
@click.option("--host", help="Address to listen on (default: the web_host setting).")
@click.option("--port", type=int, help="Port to listen on (default: the web_port setting).")
@click.option("--root-path", default=None, metavar="PATH",
              help="base_url's path, when a reverse proxy strips it before passing requests on "
                   "(default: the web_root_path setting; empty: answer under base_url's path).")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, root_path: str | None) -> None:
    """Serve sign-up, confirmation, preferences, one-click unsubscribe and public/."""
    import uvicorn

    settings = ctx.obj.settings()
    root = root_path_for(settings, root_path)
    app = create_app(settings, admin=ctx.obj.console(settings))
    uvicorn.run(app, host=host or settings.web_host, port=port or settings.web_port, proxy_headers=True,
                forwarded_allow_ips=forwarded_allow_ips(settings),
                server_header=False, root_path=root, log_level="info")
