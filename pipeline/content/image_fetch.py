"""``newsletter check --fetch-images``: ask each image URL of the library whether it answers.

Images are never fetched when building or sending (the reader's mail client or browser
fetches them); this optional check only sends a HEAD request per distinct URL, so an
editor learns about a broken or mistyped image before subscribers do.  Each problem is
reported at the file and line of the image, like every other check.
"""
from __future__ import annotations

import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.content import markup
from pipeline.content.body_check import inline_lines
from pipeline.content.library import Problem, split_front_matter

TIMEOUT = 10  # seconds per request
WORKERS = 8
USER_AGENT = "library-newsletter image check"


def image_locations(content_dir: Path) -> list[tuple[Path, int, str]]:
    """(file, line, URL) of every https image in the library's articles."""
    found = []
    for path in sorted(Path(content_dir, "articles").glob("*.md")):
        parts = split_front_matter(path.read_text(encoding="utf-8", errors="replace"))
        if parts is None:
            continue
        _front, body, body_line = parts
        for offset, child in inline_lines(markup.tokens(body)):
            if child.type == "image":
                src = child.attrGet("src") or ""
                if src.startswith("https://"):
                    found.append((path, body_line + offset, src))
    return found


def answer(url: str) -> str | None:
    """None when ``url`` answers a HEAD request with a success, else why not."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            kind = response.headers.get("Content-Type", "")
            if kind and not kind.startswith("image/"):
                return f"answers with {kind.split(';')[0]}, not an image"
            return None
    except urllib.error.HTTPError as exc:
        return f"answers HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"does not answer ({reason})"


def fetch_problems(content_dir: Path) -> list[Problem]:
    """An error for each image URL that does not answer; each distinct URL is asked once."""
    locations = image_locations(content_dir)
    urls = sorted({url for _, _, url in locations})
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        answers = dict(zip(urls, pool.map(answer, urls)))
    return [Problem(path, line, f"image {url!r} {answers[url]}") for path, line, url in locations if answers[url]]
