"""An article's version (what a review signs off, what a correction records) is read once
per build: the library notes each file's version as it loads it, and an edit after that
is seen (pipeline/content/versions.py)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pipeline.content import versions
from pipeline.content.library import check_library
from pipeline.review.reviews import article_version

from fixtures_site import write_article


def _normalised(path: Path) -> str:
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return hashlib.sha256(data).hexdigest()


def test_a_version_ignores_the_bom_and_line_ends_and_matches_a_fresh_read(content_dir, tmp_path):
    plain = write_article(content_dir, "zoe-crlf", "2025-01-02", title="Zoë’s 護膚 routine 😊 – £5")
    text = plain.read_bytes()
    crlf = content_dir / "articles" / "zoe-crlf.md"
    crlf.write_bytes(b"\xef\xbb\xbf" + text.replace(b"\n", b"\r\n"))
    assert versions.of_file(crlf) == hashlib.sha256(text).hexdigest() == _normalised(crlf)
    assert versions.of_bytes(text, hashlib.sha256(text).hexdigest()) == hashlib.sha256(text).hexdigest()


def test_a_loaded_library_needs_no_second_read_and_an_edit_is_seen(content_dir, tmp_path, monkeypatch):
    for i, title in enumerate(("Café crème – £5 ‘tips’", "王小明的文章", "Niño — why 😊")):
        write_article(content_dir, f"extra-{i}", f"2025-01-0{i + 1}", title=title)
    library, problems = check_library(content_dir, cache_dir=tmp_path / "cache")
    assert library is not None, problems
    reads: list[str] = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self.name) or real(self))
    found = {a.slug: article_version(a) for a in library.articles}
    assert reads == []  # every version came from the load
    assert found == {a.slug: _normalised(a.source) for a in library.articles}
    reads.clear()
    edited = library.article("extra-1")
    before = found["extra-1"]
    edited.source.write_text(edited.source.read_text(encoding="utf-8") + "\nOne more line.\n", encoding="utf-8")
    stat = edited.source.stat()
    os.utime(edited.source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a new stamp, even on coarse clocks
    reads.clear()
    after = article_version(edited)
    assert reads == ["extra-1.md"] and after != before and after == _normalised(edited.source)
