"""HTTP plumbing of the web service: security headers, the rate limiter, reading forms."""
from __future__ import annotations

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline import clock

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
}
NO_STORE = {"cache-control": "no-store"}  # pages reached with a personal token


class SecurityHeaders:
    """Adds ``SECURITY_HEADERS`` to every HTTP response, including the static fallback's."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()]

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


class TokenBucket:
    """Per-key token bucket: ``capacity`` requests at once, refilled at ``per_minute``.

    In memory, so per process; enough to stop one client hammering the form.
    The table is pruned of full (idle) buckets when it grows past ``max_keys``.
    """

    def __init__(self, per_minute: float, capacity: float | None = None, max_keys: int = 10_000):
        self.rate = per_minute / 60.0
        self.capacity = capacity if capacity is not None else max(per_minute, 1.0)
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> bool:
        if self.rate <= 0:
            return True
        now = clock.monotonic()
        tokens_left, last = self._buckets.get(key, (self.capacity, now))
        tokens_left = min(self.capacity, tokens_left + (now - last) * self.rate)
        allowed = tokens_left >= 1.0
        self._buckets[key] = (tokens_left - 1.0 if allowed else tokens_left, now)
        if len(self._buckets) > self.max_keys:
            self._prune(now)
        return allowed

    def _prune(self, now: float) -> None:
        for key, (left, last) in list(self._buckets.items()):
            if left + (now - last) * self.rate >= self.capacity:
                del self._buckets[key]


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


async def is_one_click(request: Request) -> bool:
    """True for the RFC 8058 body ``List-Unsubscribe=One-Click`` (url-encoded or multipart)."""
    return field(await read_form(request), "List-Unsubscribe") == "One-Click"


