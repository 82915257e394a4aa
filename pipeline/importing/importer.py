"""Import stage: a library page becomes an article file and an author file.

Two readers, chosen by file type, turn a page into the same ``Page`` value:

- ``read_text`` reads the page-text layout (``shared/seeds/microneedling-guide.txt``):
  one block per line, blank lines between blocks, ``•`` bullets, citation numbers
  glued to the cited word ("types1,2"), a "References" line and a numbered list;
- ``read_html`` reads an HTML page with the same structure: ``h1``/``h2``/``h3``,
  ``ul``/``li``, ``<sup>`` citation numbers and an ``ol`` reference list.

After the reference list both layouts carry the same trailer, read by one function
(``read_trailer``): the disclaimer, the newsletter sign-up box (dropped; its privacy
notice is kept for comparison), the author block, the comment form (dropped) and the
footer (terms notice, the site description, which is dropped, and the publisher block).

One writer (``render_article`` and ``render_author`` in writer.py, used by ``import_page``) turns a
``Page`` into ``articles/<slug>.md`` and ``authors/<id>.yaml``.  The output depends only on the page
and the options (no clock, no set order), so an import is reproducible byte for byte.
The page's disclaimer, privacy notice and publisher block are never written anywhere:
``compare_site`` reports how they differ from ``site.yaml``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Sequence

from pipeline.errors import ImportError_
from pipeline.importing.html import read_html
from pipeline.importing.page import Page
from pipeline.importing.text import read_text
from pipeline.importing.writer import (SUMMARY_NOTICE, default_published, default_summary, render_article,
                                       render_author, slug_from_title)


# -- reading a file ---------------------------------------------------------------

HTML_SUFFIXES = {".html", ".htm", ".xhtml"}


def decode(path: Path) -> str:
    """The file as text: UTF-8 only; a binary file is refused, naming the line."""
    data = path.read_bytes()
    if b"\x00" in data:
        at = data.index(b"\x00")
        raise ImportError_("binary file (it contains NUL bytes), not a library page", path=path,
                           line=data[:at].count(b"\n") + 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImportError_(f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the page as UTF-8", path=path,
                           line=data[:exc.start].count(b"\n") + 1) from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def read_page(path: Path) -> Page:
    """Read a page with the reader for its type: HTML by suffix (or, for other suffixes,
    when it starts like an HTML document), otherwise the page-text layout."""
    path = Path(path)
    text = decode(path)
    is_html = path.suffix.lower() in HTML_SUFFIXES or (
        path.suffix.lower() not in {".txt", ".text"} and re.match(r"\s*<(!doctype html|html)\b", text, re.I))
    return read_html(path, text) if is_html else read_text(path, text)


# -- the site blocks ----------------------------------------------------------------


@dataclass(frozen=True)
class SiteDifference:
    setting: str  # "disclaimer", "publisher.vat_number", ...
    site: str
    page: str

    def __str__(self) -> str:
        return (f"site setting {self.setting} differs from the page (site.yaml is kept as it is)\n"
                f"  site.yaml: {self.site}\n  page:      {self.page}")


def _normal(value) -> str:
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    return " ".join(str(value if value is not None else "").split())


def compare_site(page: Page, settings) -> list[SiteDifference]:
    """Each site text the page states, compared whitespace-normalised with the
    setting.  What the page leaves blank (the seed's "Email:") is not a difference."""
    differences = []
    for name in ("disclaimer", "privacy_notice", "terms_notice"):
        stated = getattr(page.site, name)
        if stated and _normal(stated) != _normal(settings.get(name)):
            differences.append(SiteDifference(name, _normal(settings.get(name)), _normal(stated)))
    publisher = settings.get("publisher") if isinstance(settings.get("publisher"), dict) else {}
    for name, stated in page.site.publisher:
        if _normal(stated) and _normal(stated) != _normal(publisher.get(name)):
            differences.append(SiteDifference(f"publisher.{name}", _normal(publisher.get(name)), _normal(stated)))
    return differences


# -- the whole import ---------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    article_path: Path
    author_path: Path
    written: tuple[Path, ...]  # files created or replaced
    warnings: tuple[str, ...] = field(default=())


def import_page(page_path: Path, out_dir: Path, settings, *, slug: str | None = None,
                published: date | None = None, topics: Sequence[str] = (), summary: str | None = None,
                force: bool = False) -> ImportResult:
    """Read ``page_path`` and write ``<out_dir>/articles/<slug>.md`` and
    ``<out_dir>/authors/<id>.yaml``.  An existing article is replaced only with
    ``force``; an existing author file that differs is kept (authors are shared by
    articles) unless ``force``.  Nothing is written when anything is wrong."""
    page = read_page(page_path)
    warnings = list(page.notes)
    slug = slug or slug_from_title(page.title)
    if not re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", slug):
        raise ImportError_(f"slug {slug!r} must be lowercase letters, digits and hyphens", path=page_path)
    known = settings.get("topics") or {}
    for topic in topics:
        if topic not in known:
            raise ImportError_(f"unknown topic {topic!r}; the site's topics are: {', '.join(known)}",
                               path=settings.source)
    published = published or default_published(page)
    if published is None:
        raise ImportError_("no publication date: no reference has a cited date; pass --published YYYY-MM-DD",
                           path=page_path)
    article_text = render_article(page, slug=slug, published=published, topics=topics,
                                  summary=summary or default_summary(page))
    if not summary:
        warnings.append(SUMMARY_NOTICE.format(path=Path(out_dir) / "articles" / f"{slug}.md"))
    author_text = render_author(page.author)
    warnings += [str(d) for d in compare_site(page, settings)]

    article_path = Path(out_dir) / "articles" / f"{slug}.md"
    author_path = Path(out_dir) / "authors" / f"{page.author.id}.yaml"
    plan: list[tuple[Path, str]] = []
    if not article_path.exists() or force:
        plan.append((article_path, article_text))
    elif article_path.read_text(encoding="utf-8") != article_text:
        raise ImportError_("the article already exists and differs from this import; pass --force to replace it",
                           path=article_path)
    if not author_path.exists() or force:
        plan.append((author_path, author_text))
    elif author_path.read_text(encoding="utf-8") != author_text:
        warnings.append(f"{author_path} differs from the page's author block and is kept (--force replaces it)")
    written = []
    for path, text in plan:
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)  # a reader never sees half a file
        written.append(path)
    return ImportResult(article_path, author_path, tuple(written), tuple(warnings))


def import_cli(page: Path, out_dir: Path, content_dir: Path, *, slug: str | None = None,
               published: date | None = None, topics: Sequence[str] = (), summary: str | None = None,
               force: bool = False) -> ImportResult:
    """``newsletter import``: import, then print what was written and every warning."""
    import click

    from pipeline.settings import load_settings

    result = import_page(page, out_dir, load_settings(content_dir), slug=slug, published=published,
                         topics=topics, summary=summary, force=force)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    for path in (result.article_path, result.author_path):
        click.echo(f"{'wrote' if path in result.written else 'unchanged'}: {path}")
    return result
