"""HTTP plumbing of the web service: security headers, the path prefix, the body
limit and broken connections, reading forms."""
from __future__ import annotations

import logging
from typing import Callable

import anyio

from starlette.datastructures import FormData, Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send


try:  # uvicorn's h11 server raises this when the app answers on a connection it already closed
    from h11 import LocalProtocolError as _ConnectionStateError
except ImportError:  # pragma: no cover - another server
    _ConnectionStateError = RuntimeError

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # every form here is a few hundred bytes

# Inline <script> is never allowed; inline styles are (base.html carries its CSS
# inline, and the archive pages served by the fallback are email-like HTML).
SECURITY_HEADERS = {
    "content-security-policy": ("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                                "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    # The pages use none of these browser features; deny them all, to us and to anything embedded.
    "permissions-policy": ", ".join(f"{feature}=()" for feature in (
        "accelerometer", "ambient-light-sensor", "autoplay", "battery", "bluetooth", "browsing-topics", "camera",
        "display-capture", "document-domain", "encrypted-media", "fullscreen", "gamepad", "geolocation",
        "gyroscope", "hid", "idle-detection", "interest-cohort", "local-fonts", "magnetometer", "microphone",
        "midi", "payment", "picture-in-picture", "publickey-credentials-get", "screen-wake-lock", "serial",
        "speaker-selection", "usb", "web-share", "xr-spatial-tracking")),
}
# Sent only when base_url is https.  No includeSubDomains or preload: the service usually sits
# under a path of a host whose other parts it does not speak for.
HSTS = {"strict-transport-security": "max-age=31536000"}
NO_STORE = {"cache-control": "no-store"}  # pages reached with a personal token


class SecurityHeaders:
    """Adds ``SECURITY_HEADERS`` (and HSTS over https) to every HTTP response, including
    the static fallback's and the error pages'."""

    def __init__(self, app: ASGIApp, *, https: bool = False):
        self.app = app
        headers = {**SECURITY_HEADERS, **(HSTS if https else {})}
        self.raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [h for h in self.raw if h[0] not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class UnderPrefix:
    """Answers only under ``prefix`` (base_url's path, e.g. ``/newsletter``).

    A request for ``/newsletter/subscribe`` reaches the routes as ``/subscribe``, with
    ``root_path`` set to the prefix.  When the server was started with that root_path
    (uvicorn ``--root-path``, for a proxy that strips the prefix), uvicorn has already
    put it in front of the path and in ``root_path``, and the request passes unchanged.
    Anything outside the prefix gets ``outside`` (the not-found page)."""

    def __init__(self, app: ASGIApp, prefix: str, outside: Callable[[], Response]):
        self.app, self.prefix, self.outside = app, prefix.rstrip("/"), outside

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.prefix:
            await self.app(scope, receive, send)
            return
        root = scope.get("root_path", "").rstrip("/")
        if root == self.prefix:
            await self.app(scope, receive, send)
            return
        here = root + self.prefix
        path = scope["path"]
        if path == here or path.startswith(here + "/"):
            await self.app({**scope, "root_path": here}, receive, send)
            return
        await self.outside()(scope, receive, send)


class Guard:
    """The outermost layer: a request body is at most ``max_body`` bytes, and a client that
    breaks its request (a malformed or unfinished body, a closed connection) costs one
    log line, never a traceback.

    A declared Content-Length over the limit gets ``too_large()`` (the HTML error page)
    at once; a chunked body that grows past it raises a 413 ``HTTPException`` inside the
    handler reading it, which the app's error handler renders the same way.  When the
    server can no longer take our response (uvicorn has already answered a malformed
    body with its own 400, or the peer is gone), the rest of the response is dropped."""

    def __init__(self, app: ASGIApp, max_body: int, too_large: Callable[[], Response]):
        self.app, self.max_body, self.too_large = app, max_body, too_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"received": 0, "gone": False}

        async def checked_send(message: Message) -> None:
            if state["gone"]:
                return
            try:
                await send(message)
            except (_ConnectionStateError, OSError) as exc:
                state["gone"] = True
                log.info("%s request: response not delivered, the connection is closed (%s)",
                         scope.get("method"), type(exc).__name__)

        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_body:
            await self.too_large()(scope, receive, checked_send)
            return

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body:
                    raise HTTPException(413)
            return message

        try:
            await self.app(scope, limited_receive, checked_send)
        except ClientDisconnect:
            log.info("%s request: the client went away before its body arrived", scope.get("method"))
        if state["gone"]:
            # The server closed the connection itself; let it notice (one turn of the event
            # loop) before we return, or it reports the response we could not send as an error.
            for _ in range(3):
                await anyio.sleep(0)


async def client_gone(request: Request, exc: Exception) -> Response:
    """The app's handler for ``ClientDisconnect``: nobody is listening; one line in the log."""
    log.info("%s request: the client went away before its body arrived", request.method)
    return Response(status_code=400)


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


async def read_form(request: Request) -> FormData:
    """The posted form; no file uploads, a few fields.  A body that is not a form
    (or is malformed) is treated as an empty form, never as a server error."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return FormData()
    try:
        return await request.form(max_files=0, max_fields=64, max_part_size=MAX_BODY)
    except HTTPException as exc:
        if exc.status_code == 413:
            raise
        return FormData()
    except (ValueError, UnicodeDecodeError, KeyError, AssertionError):
        return FormData()


def field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def fields(form: FormData, name: str) -> list[str]:
    return [v for v in form.getlist(name) if isinstance(v, str)]


FORM_MAX_AGE = 2 * 3600  # seconds a form stays valid (its CSRF token)


def mask_email(address: str) -> str:
    """``j•••@example.com``: enough for the person to recognise, too little for whoever the email was forwarded to."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}•••@{domain}"


def forwarded_allow_ips(settings) -> str:
    """uvicorn's ``forwarded_allow_ips`` from the ``trusted_proxies`` setting: "" trusts nobody."""
    value = str(settings.trusted_proxies or "").strip()
    return "" if value.lower() == "none" else value
