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
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from pipeline.settings import Settings
from pipeline.web.http import MAX_BODY, SecurityHeaders, TokenBucket
from pipeline.web.service import TEMPLATES, WebService
from subscribers import tokens


def create_app(settings: Settings, engine: Engine | None = None, *, send: Callable | None = None,
               public_dir: Path | str | None = None, static_app: ASGIApp | None = None,
               rate_per_minute: float | None = None, mail_worker: bool = True) -> ASGIApp:
    """The web service.  ``send(settings, EmailMessage)`` defaults to
    ``pipeline.transport.send_single``; ``static_app`` to ``StaticSite(public_dir)``.
    With ``mail_worker`` the app sends the mail queue from a background thread
    (started with the app, or at the first mail queued)."""
    from pipeline.database import open_database
    from pipeline.static_files import StaticSite
    from pipeline.transport import send_single

    from pipeline.web import redact

    tokens.secret(settings)  # fail at start, not at the first sign-up, when no secret is set
    redact.install()
    engine = engine if engine is not None else open_database(settings.database_url)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined)
    service = WebService(settings=settings, engine=engine, send=send or send_single,
                         limiter=TokenBucket(settings.subscribe_rate_per_minute if rate_per_minute is None
                                             else rate_per_minute), env=env,
                         rate_per_minute=None if rate_per_minute is None else int(rate_per_minute),
                         mail_worker=mail_worker)
    static = static_app or StaticSite(public_dir or settings.public_dir)
    routes = [
        Route("/subscribe", service.get_subscribe, methods=["GET"]),
        Route("/subscribe", service.post_subscribe, methods=["POST"]),
        Route("/subscribe/sent", service.subscribe_sent, methods=["GET"]),
        Route("/confirm/{token}", service.confirm_page, methods=["GET"]),
        Route("/confirm/{token}", service.confirm, methods=["POST"]),
        Route("/unsubscribe/{token}", service.unsubscribe, methods=["GET", "POST"]),
        Route("/preferences/{token}", service.preferences, methods=["GET", "POST"]),
        Route("/preferences/{token}/data-link", service.data_link, methods=["POST"]),
        Route("/data/{token}", service.data_page, methods=["GET"]),
        Route("/data/{token}/export", service.export, methods=["POST"]),
        Route("/data/{token}/erase", service.erase, methods=["POST"]),
        Route("/healthz", service.healthz, methods=["GET"]),
        Route("/readyz", service.readyz, methods=["GET"]),
        Mount("/", app=static),
    ]
    @asynccontextmanager
    async def lifespan(_app):
        service.start_worker()  # mail queued before a restart goes out now
        try:
            yield
        finally:
            service.stop_worker()

    app = Starlette(routes=routes, max_body_size=MAX_BODY, lifespan=lifespan,
                    exception_handlers={HTTPException: service.http_error, Exception: service.server_error})
    app.state.service = service
    return SecurityHeaders(app)


@click.command("serve")
@click.option("--host", help="Address to listen on (default: the web_host setting).")
@click.option("--port", type=int, help="Port to listen on (default: the web_port setting).")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve sign-up, confirmation, preferences, one-click unsubscribe and public/."""
    import uvicorn

    settings = ctx.obj.settings()
    app = create_app(settings)
    uvicorn.run(app, host=host or settings.web_host, port=port or settings.web_port, proxy_headers=True,
                server_header=False, log_level="info")
