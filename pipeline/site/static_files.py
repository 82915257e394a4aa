"""Serving ``public/``: an ASGI app for the archive pages and the feeds.

``StaticSite(public_dir)`` serves what ``newsletter build`` wrote, with what
feed readers need to poll cheaply: the feeds' own media types, a strong
``ETag`` from a hash of the bytes, ``Last-Modified`` from the file's mtime
(kept stable by the site writer), and ``304 Not Modified`` on a matching
``If-None-Match`` or ``If-Modified-Since``.  A folder is served through its
``index.html``; paths outside ``public/`` are never served (no ``..``, no
symlink escapes); a missing file gets ``404.html``.  A folder asked for without its
trailing slash is redirected to ``base_url`` + the path (never to the Host header's
host); without a ``base_url`` the Location is the path alone.

Text (HTML, XML, JSON, CSS, SVG, plain text) is sent gzip-compressed to a client that
accepts it, with ``Vary: Accept-Encoding``; the compressed form is another representation,
so it has its own strong ETag (``"<hash>-gz"``), and a conditional GET with either tag gets
a 304. The feed files (``feed.xml``, ``atom.xml``, ``feed.json``, the topics' too) carry
``Access-Control-Allow-Origin: *`` so web-based feed readers can fetch them, and answer the
CORS preflight a conditional fetch needs; nothing else does (``is_feed``).

The web service mounts this as its fallback route; it also runs on its own:
``uvicorn --factory pipeline.site.static_files:app_from_env``.
"""
from __future__ import annotations

import gzip
import hashlib
import mimetypes
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import anyio
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from pipeline.site import icons
from pipeline.site.feeds import FEEDS

# By file name first (the feeds), then by extension.
MEDIA_TYPES_BY_NAME = {name: media_type if media_type.endswith("json") else f"{media_type}; charset=utf-8"
                       for name, (media_type, _) in FEEDS.items()}
MEDIA_TYPES_BY_SUFFIX = {
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".xml": "application/xml; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
}
NOT_FOUND_PAGE = "404.html"
INDEX = "index.html"
# compressed when the client accepts gzip: text, whatever its media type says
COMPRESSIBLE = ("text/", "application/xml", "application/json", "application/rss+xml", "application/atom+xml",
                "application/feed+json", "image/svg+xml")
MIN_GZIP_SIZE = 256  # below this, the gzip header costs more than it saves
# the feed files, to web pages of any origin (a reader's conditional GET sends If-None-Match,
# which is not CORS-safelisted, so it is preflighted; the ETag must be readable)
CORS_HEADERS = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "ETag"}
PREFLIGHT_HEADERS = {**CORS_HEADERS, "Access-Control-Allow-Methods": "GET, HEAD",
                     "Access-Control-Allow-Headers": "If-None-Match, If-Modified-Since", "Access-Control-Max-Age": "86400"}
# Readers revalidate every time (cheap with the ETag); nothing is sent to third parties.
COMMON_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def media_type(path: Path) -> str:
    if path.name in MEDIA_TYPES_BY_NAME:
        return MEDIA_TYPES_BY_NAME[path.name]
    if path.suffix.lower() in MEDIA_TYPES_BY_SUFFIX:
        return MEDIA_TYPES_BY_SUFFIX[path.suffix.lower()]
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def is_feed(url_path: str) -> bool:
    """True for a feed file (by its name, at any depth): the only files readable cross-origin."""
    return url_path.rsplit("/", 1)[-1] in FEEDS


def compressible(content_type: str) -> bool:
    return content_type.startswith(COMPRESSIBLE)


def accepts_gzip(value: str | None) -> bool:
    """Whether an Accept-Encoding header allows gzip (``gzip;q=0`` refuses it)."""
    for part in (value or "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip().lower()
            return not (q.startswith("q=") and q[2:].strip().rstrip("0").rstrip(".") in ("0", ""))
    return False


@dataclass(frozen=True)
class _Entry:
    etag: str
    last_modified: datetime  # whole seconds, UTC
    stamp: tuple[int, int, int]  # (inode, size, mtime_ns): when it changes, the entry is stale


def _route_path(scope: Scope) -> str:
    """The path below the mount point (Starlette keeps the full path and sets root_path)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):] or "/"
    return path


class StaticSite:
    """ASGI app serving the files under ``root``."""

    def __init__(self, root: Path | str, base_url: str = "", not_found: Callable[[], Response] | None = None):
        self.root = Path(root).resolve()
        self.base_url = base_url.rstrip("/")
        self.not_found = not_found  # the answer when public/ has no 404.html (default: plain text)
        self._cache: dict[Path, _Entry] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("StaticSite serves HTTP only")
        request = Request(scope, receive)
        # file reads and hashing happen off the event loop
        response = await anyio.to_thread.run_sync(self.respond, request.method, _route_path(scope), request.headers,
                                                  scope.get("root_path", ""))
        await response(scope, receive, send)

    # -- resolution ----------------------------------------------------------------

    def resolve(self, url_path: str) -> Path | None:
        """The file for ``url_path`` inside root, or None. Never leaves root."""
        if "\x00" in url_path or "\\" in url_path:
            return None
        parts = [p for p in url_path.split("/") if p not in ("", ".")]
        if any(p == ".." or p.startswith(".") for p in parts):
            return None  # no traversal, no dotfiles (the writer's temporary files start with a dot)
        candidate = self.root.joinpath(*parts)
        try:
            real = candidate.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError, OSError):
            return None
        if real != self.root and self.root not in real.parents:
            return None  # a symlink pointing outside public/
        return real

    def _entry(self, path: Path) -> tuple[_Entry, bytes | None]:
        st = path.stat()
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._cache.get(path)
        if cached is not None and cached.stamp == stamp:
            return cached, None
        body = path.read_bytes()
        entry = _Entry(etag=f'"{hashlib.sha256(body).hexdigest()[:32]}"',
                       last_modified=datetime.fromtimestamp(int(st.st_mtime), tz=timezone.utc), stamp=stamp)
        self._cache[path] = entry
        return entry, body

    # -- responses -------------------------------------------------------------------

    def respond(self, method: str, url_path: str, headers, mount_path: str = "") -> Response:
        if method == "OPTIONS" and is_feed(url_path) and self.resolve(url_path) is not None:
            return Response(status_code=204, headers={"Allow": "GET, HEAD, OPTIONS", **PREFLIGHT_HEADERS,
                                                      **COMMON_HEADERS})
        if method not in ("GET", "HEAD"):
            return PlainTextResponse("Method Not Allowed", status_code=405,
                                     headers={"Allow": "GET, HEAD", **COMMON_HEADERS})
        target = self.resolve(url_path)
        if target is not None and target.is_dir():
            if not url_path.endswith("/"):
                # relative links in index.html need the trailing slash.  Empty segments are
                # dropped: "//articles" echoed back would be a protocol-relative URL to another host.
                clean = "/".join(p for p in url_path.split("/") if p not in ("", "."))
                where = self.base_url or mount_path  # base_url already ends with the mount's prefix
                return RedirectResponse(where + quote(f"/{clean}".rstrip("/")) + "/", status_code=301,
                                        headers=COMMON_HEADERS)
            index = target / INDEX
            target = index if index.is_file() else None
        if target is None or not target.is_file():
            if url_path.strip("/") in icons.FILES:
                return self._builtin_icon(method, url_path.strip("/"), headers)
            return self._not_found(method)
        response = self._file(method, target, headers)
        if is_feed(url_path):
            response.headers.update(CORS_HEADERS)
        return response

    def _file(self, method: str, path: Path, headers, status: int = 200) -> Response:
        entry, body = self._entry(path)
        content_type = media_type(path)
        text = compressible(content_type)
        zipped = text and accepts_gzip(headers.get("accept-encoding")) and entry.stamp[1] >= MIN_GZIP_SIZE
        etag = _gzip_etag(entry.etag) if zipped else entry.etag
        validators = {"ETag": etag, "Last-Modified": format_datetime(entry.last_modified, usegmt=True),
                      **COMMON_HEADERS, **({"Vary": "Accept-Encoding"} if text else {})}
        if status == 200 and _not_modified(headers, entry):
            return Response(status_code=304, headers=validators)
        if body is None:
            body = path.read_bytes()
        if zipped:
            body = gzip.compress(body, compresslevel=6, mtime=0)  # mtime=0: the same bytes every time
            validators["Content-Encoding"] = "gzip"
        response = Response(b"" if method == "HEAD" else body, status_code=status,
                            headers=validators, media_type=content_type)
        if method == "HEAD":
            response.headers["Content-Length"] = str(len(body))
        return response

    def _builtin_icon(self, method: str, name: str, headers) -> Response:
        """An icon ``newsletter build`` has not written yet: the same bytes, from the code, so the
        web service's own pages have their favicon before the first build."""
        body = icons.file(name)
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        validators = {"ETag": etag, **COMMON_HEADERS}
        if etag in _etags(headers.get("if-none-match") or ""):
            return Response(status_code=304, headers=validators)
        response = Response(b"" if method == "HEAD" else body, headers=validators,
                            media_type=media_type(Path(name)))
        if method == "HEAD":
            response.headers["Content-Length"] = str(len(body))
        return response

    def _not_found(self, method: str) -> Response:
        page = self.root / NOT_FOUND_PAGE
        if page.is_file():
            response = self._file(method, page, {}, status=404)
            # the validators describe 404.html, not the missing URL
            del response.headers["ETag"]
            del response.headers["Last-Modified"]
            return response
        if self.not_found is not None:
            return self.not_found()
        return PlainTextResponse("Not Found", status_code=404, headers=COMMON_HEADERS)


def _gzip_etag(etag: str) -> str:
    """The strong ETag of the gzip representation: another tag than the identity one."""
    return etag[:-1] + '-gz"'


def _etags(value: str) -> list[str]:
    # weak comparison (RFC 9110 13.1.2): W/"x" matches "x"
    return [tag.strip().removeprefix("W/") for tag in value.split(",") if tag.strip()]


def _not_modified(headers, entry: _Entry) -> bool:
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2)
        tags = _etags(if_none_match)
        # either representation's tag: the client may have cached the other one
        return "*" in tags or entry.etag in tags or _gzip_etag(entry.etag) in tags
    since = headers.get("if-modified-since")
    if since:
        try:
            when = parsedate_to_datetime(since)
        except (TypeError, ValueError, IndexError):
            return False
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return entry.last_modified <= when
    return False


def app_from_env() -> StaticSite:
    """Factory for ``uvicorn --factory``: serves $NEWSLETTER_PUBLIC_DIR (default ``public``);
    folder redirects go to $NEWSLETTER_BASE_URL when it is set."""
    return StaticSite(os.environ.get("NEWSLETTER_PUBLIC_DIR", "public"), os.environ.get("NEWSLETTER_BASE_URL", ""))
