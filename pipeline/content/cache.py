"""The content cache: what makes loading an unchanged library cost a hash per file.

``content.json`` under ``<public_dir>/.cache/`` holds, per article file, the checked
front matter and the problems ``check`` found, keyed by the SHA-256 of the file's
bytes and of everything else the check reads (authors, topics, the code). Every file
is still read and hashed on each load, so a cached result is never trusted on mtime
alone. Articles dated in the future are never stored (an embargoed title stays off
disk). A missing, unreadable or foreign cache is just empty.

The hashing and JSON helpers here are shared with the site's output manifest
(``pipeline/site/buildcache.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import date
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.content.article import Article, Author, Reference

FORMAT = 3  # 2: no review in the record (reviews come from the database); 3: "sha" is the plain SHA-256 of the file
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # all of pipeline/: a code change anywhere rebuilds


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8") if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def file_sha(data: bytes) -> str:
    """The plain SHA-256 of a file's bytes: the content cache's key, and an article's version
    when its bytes need no normalising (``pipeline.content.versions``)."""
    return hashlib.sha256(data).hexdigest()


def tree_hash(root: Path, pattern: str) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob(pattern)):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(root)).encode("utf-8") + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@lru_cache(maxsize=1)
def code_hash() -> str:
    """The pipeline's own source and version: a new check rule or page layout invalidates caches."""
    try:
        version = metadata.version("library-newsletter")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return digest(str(FORMAT), version, tree_hash(PACKAGE_ROOT, "*.py"))


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(_json_chunks(data))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_chunks(data: dict):
    """``json.dumps(data, ensure_ascii=False, separators=(",", ":"))`` in pieces of one entry of
    each mapping inside ``data``: the C encoder's speed (``json.dump`` goes through the pure-Python
    one, several times slower) without the whole text in memory at once (tens of MB at 10,000 articles)."""
    def dumps(value) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    yield "{"
    for i, (key, value) in enumerate(data.items()):
        yield ("," if i else "") + dumps(key) + ":"
        if isinstance(value, dict) and value:
            yield "{"
            for j, (name, entry) in enumerate(value.items()):
                yield ("," if j else "") + dumps(name) + ":" + dumps(entry)
            yield "}"
        else:
            yield dumps(value)
    yield "}"


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("format") == FORMAT else {}


# -- the content cache ----------------------------------------------------------------

def _article_record(article: Article) -> dict:
    return {"slug": article.slug, "title": article.title, "summary": article.summary,
            "published": article.published.isoformat(),
            "updated": article.updated.isoformat() if article.updated else None,
            "author": article.author.id, "topics": list(article.topics),
            "references": [[r.text, r.url, r.cited.isoformat() if r.cited else None] for r in article.references],
            "body_line": article.body_line, "body_chars": len(article.body)}


@lru_cache(maxsize=65536)
def _date(text: str) -> date:
    return date.fromisoformat(text)  # a library has a few thousand distinct dates, read 80,000 times


def _article_from(record: dict, body: str, source: Path, authors: dict[str, Author]) -> Article:
    return Article(slug=record["slug"], title=record["title"], summary=record["summary"],
                   published=_date(record["published"]),
                   updated=_date(record["updated"]) if record["updated"] else None,
                   author=authors[record["author"]], body=body, topics=tuple(record["topics"]),
                   references=tuple(Reference(number=i, text=text, url=url, cited=_date(cited) if cited else None)
                                    for i, (text, url, cited) in enumerate(record["references"], 1)),
                   source=source, body_line=int(record["body_line"]))


class ContentCache:
    """Checked articles by (path, content hash, context hash); see the module doc."""

    def __init__(self, folder: Path | str):
        self.path = Path(folder) / "content.json"
        self.entries: dict[str, dict] = read_json(self.path).get("articles", {})
        self.seen: set[str] = set()
        # path -> digest of everything an Article is made from (file bytes, path, authors,
        # topics, code): the input key of its page, without hashing the article again
        self.input_keys: dict[str, str] = {}
        self.changed = False

    @staticmethod
    def context(authors: dict[str, Author], topics: dict | None) -> str:
        return digest(code_hash(), repr(sorted(authors.items())), repr(sorted(topics) if topics is not None else None))

    def get(self, path: Path, data: bytes, context: str, authors: dict[str, Author], sha: str | None = None):
        """(article or None, slug line, [(level, line, message)]) when cached, else None
        (``sha``: ``file_sha(data)`` when the caller has it)."""
        key = str(path)
        self.seen.add(key)
        sha = sha or file_sha(data)
        self.input_keys[key] = digest(key, sha, context)
        entry = self.entries.get(key)
        if not entry or entry["sha"] != sha or entry["context"] != context:
            return None
        record = entry["article"]
        article = None
        if record is not None:
            # the body is the end of the text, after the front matter: its length is recorded
            text = data.decode("utf-8")
            body = text[len(text) - record["body_chars"]:]
            article = _article_from(record, body, path, authors)
        return article, entry["slug_line"], entry["problems"]

    def put(self, path: Path, data: bytes, context: str, article: Article | None, slug_line: int | None,
            problems: list[tuple[str, int | None, str]], *, embargoed_after: date, sha: str | None = None) -> None:
        if article is not None and article.published > embargoed_after:
            self.entries.pop(str(path), None)  # keep a future article's text off disk
            return
        self.entries[str(path)] = {"sha": sha or file_sha(data), "context": context, "slug_line": slug_line,
                                   "article": _article_record(article) if article else None,
                                   "problems": [list(p) for p in problems]}
        self.changed = True

    def save(self, *, create: bool = True) -> None:
        """Write the cache (only entries for files seen in this load); with ``create`` False,
        only when its folder already exists."""
        gone = set(self.entries) - self.seen
        for key in gone:
            del self.entries[key]
        if (self.changed or gone) and (create or self.path.parent.is_dir()):
            write_json(self.path, {"format": FORMAT, "articles": self.entries})
