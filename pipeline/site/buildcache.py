"""Build caches: what makes a rebuild of an unchanged library cost a few stat calls.

Two JSON files under ``<public_dir>/.cache/`` (a dot folder: the static server
never serves it, and it holds no text an article page does not already show):

- ``content.json`` (``pipeline.content.cache.ContentCache``): per article file, the checked front matter
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

import os
from pathlib import Path

from pipeline.content.article import Article
from pipeline.content.cache import FORMAT, read_json, write_json, code_hash, digest, tree_hash
from pipeline.settings import BY_NAME, Settings

CACHE_DIR = ".cache"


def build_hash(settings: Settings, templates: Path) -> str:
    """Everything every output depends on besides the articles themselves."""
    values = repr(sorted((k, v) for k, v in settings.items() if not (k in BY_NAME and BY_NAME[k].secret)))
    return digest(code_hash(), tree_hash(templates, "*"), values)


# -- the output manifest -----------------------------------------------------------------

class SiteManifest:
    """What we last wrote to each output file, and from which inputs; see the module doc."""

    def __init__(self, public_dir: Path | str, build: str):
        self.path = Path(public_dir) / CACHE_DIR / "site.json"
        data = read_json(self.path)
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

    def adopt(self, relative: str, entry: list) -> None:
        """An entry ``record`` made in a worker process (``pipeline.site.parallel``)."""
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
            write_json(self.path, {"format": FORMAT, "build": self.build, "files": self.files})


def article_key(article: Article) -> str:
    """The inputs of an article's page: every field of the article (its author included)."""
    a = article
    references = tuple((r.number, r.text, r.url, r.cited) for r in a.references)
    author = (a.author.id, a.author.name, a.author.credentials, a.author.bio, a.author.photo)
    reviewer = a.reviewed_by and (a.reviewed_by.id, a.reviewed_by.name, a.reviewed_by.credentials)
    meta = (a.slug, a.title, a.summary, a.published, a.updated, author, a.topics, references, a.body_line,
            reviewer, a.reviewed_on)
    return digest(repr(meta), a.body)
