"""Build caches: what makes a rebuild of an unchanged library cost a few stat calls.

Two JSON files under ``<public_dir>/.cache/`` (a dot folder: the static server
never serves it, and it holds no text an article page does not already show):

- ``content.json`` (``ContentCache``): per article file, the checked front matter
  and the problems ``check`` found, keyed by the SHA-256 of the file's bytes and of
  everything else the check reads (authors, topics, the code). Every file is still
  read and hashed on each load, so a cached result is never trusted on mtime alone.
  Articles dated in the future are never stored (an embargoed title stays off disk).
- ``site.json`` (``SiteManifest``): per output file, the SHA-256, size and mtime of
  the bytes we wrote and the key of the inputs that made them. A page whose input key
  is unchanged and whose file still has the recorded size and mtime is not rendered.

Both carry the ``build_hash`` (the pipeline's code, ``templates/``, the package
version and every non-secret setting): when it changes, the cache is dropped and
everything is rendered again. A missing, unreadable or foreign cache is just empty.
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

from pipeline.article import Article, Author, Reference
from pipeline.settings import BY_NAME, Settings

CACHE_DIR = ".cache"
FORMAT = 1
PACKAGE_ROOT = Path(__file__).resolve().parent


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8") if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def _tree_hash(root: Path, pattern: str) -> str:
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
    return digest(str(FORMAT), version, _tree_hash(PACKAGE_ROOT, "*.py"))


def build_hash(settings: Settings, templates: Path) -> str:
    """Everything every output depends on besides the articles themselves."""
    values = repr(sorted((k, v) for k, v in settings.items() if not (k in BY_NAME and BY_NAME[k].secret)))
    return digest(code_hash(), _tree_hash(templates, "*"), values)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, ensure_ascii=False, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> dict:
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


def _article_from(record: dict, body: str, source: Path, authors: dict[str, Author]) -> Article:
    return Article(slug=record["slug"], title=record["title"], summary=record["summary"],
                   published=date.fromisoformat(record["published"]),
                   updated=date.fromisoformat(record["updated"]) if record["updated"] else None,
                   author=authors[record["author"]], body=body, topics=tuple(record["topics"]),
                   references=tuple(Reference(number=i, text=text, url=url,
                                              cited=date.fromisoformat(cited) if cited else None)
                                    for i, (text, url, cited) in enumerate(record["references"], 1)),
                   source=source, body_line=int(record["body_line"]))


class ContentCache:
    """Checked articles by (path, content hash, context hash); see the module doc."""

    def __init__(self, folder: Path | str):
        self.path = Path(folder) / "content.json"
        self.entries: dict[str, dict] = _read_json(self.path).get("articles", {})
        self.seen: set[str] = set()
        # path -> digest of everything an Article is made from (file bytes, path, authors,
        # topics, code): the input key of its page, without hashing the article again
        self.input_keys: dict[str, str] = {}
        self.changed = False

    @staticmethod
    def context(authors: dict[str, Author], topics: dict | None) -> str:
        return digest(code_hash(), repr(sorted(authors.items())), repr(sorted(topics) if topics is not None else None))

    def get(self, path: Path, data: bytes, context: str, authors: dict[str, Author]):
        """(article or None, slug line, [(level, line, message)]) when cached, else None."""
        key = str(path)
        self.seen.add(key)
        sha = digest(data)
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
            problems: list[tuple[str, int | None, str]], *, embargoed_after: date) -> None:
        if article is not None and article.published > embargoed_after:
            self.entries.pop(str(path), None)  # keep a future article's text off disk
            return
        self.entries[str(path)] = {"sha": digest(data), "context": context, "slug_line": slug_line,
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
            _write_json(self.path, {"format": FORMAT, "articles": self.entries})


# -- the output manifest -----------------------------------------------------------------

class SiteManifest:
    """What we last wrote to each output file, and from which inputs; see the module doc."""

    def __init__(self, public_dir: Path | str, build: str):
        self.path = Path(public_dir) / CACHE_DIR / "site.json"
        data = _read_json(self.path)
        # another build hash (templates, settings, code): nothing recorded can be reused
        self.files: dict[str, list] = data.get("files", {}) if data.get("build") == build else {}
        self.build = build
        self.changed = not data or data.get("build") != build

    def _stat_matches(self, path: Path | str, entry: list) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        return st.st_size == entry[1] and st.st_mtime_ns == entry[2]

    def fresh(self, relative: str, path: Path | str, key: str) -> bool:
        """True when ``relative`` was made from inputs ``key`` and the file is still ours."""
        entry = self.files.get(relative)
        return bool(entry) and entry[3] == key and self._stat_matches(path, entry)

    def same_bytes(self, relative: str, path: Path, sha: str) -> bool:
        entry = self.files.get(relative)
        return bool(entry) and entry[0] == sha and self._stat_matches(path, entry)

    def record(self, relative: str, path: Path, sha: str, key: str | None) -> None:
        st = path.stat()
        entry = [sha, st.st_size, st.st_mtime_ns, key]
        if self.files.get(relative) != entry:
            self.files[relative] = entry
            self.changed = True

    def forget_under(self, relative: str) -> None:
        prefix = relative.rstrip("/") + "/"
        for name in [n for n in self.files if n.startswith(prefix)]:
            del self.files[name]
            self.changed = True

    def save(self) -> None:
        if self.changed:
            _write_json(self.path, {"format": FORMAT, "build": self.build, "files": self.files})


def article_key(article: Article) -> str:
    """The inputs of an article's page: every field of the article (its author included)."""
    a = article
    references = tuple((r.number, r.text, r.url, r.cited) for r in a.references)
    author = (a.author.id, a.author.name, a.author.credentials, a.author.bio, a.author.photo)
    meta = (a.slug, a.title, a.summary, a.published, a.updated, author, a.topics, references, a.body_line)
    return digest(repr(meta), a.body)
