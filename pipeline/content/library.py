"""Content stage: load and check the whole library, the way a compiler would.

``load_library(content_dir)`` reads ``site.yaml``, ``authors/*.yaml`` and
``articles/*.md`` and returns a frozen ``Library``.  Every problem found is a
``Problem`` with file, line and reason; any error fails the whole load
(``LibraryError``), so nothing is built or sent from a half-valid library.
``check_library`` returns the problems without raising, for ``newsletter check``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from pipeline import clock
from pipeline.content import legal, markup, versions
from pipeline.content.body_check import check_body, citation_lines, is_absolute_http_url
from pipeline.content.article import Article, Author, Reference
from pipeline.content.cache import ContentCache, file_sha
from pipeline.errors import ContentError
from pipeline.settings import Settings, load_settings

ARTICLE_REQUIRED = ("title", "slug", "summary", "published", "author")
ARTICLE_FIELDS = set(ARTICLE_REQUIRED) | {"updated", "topics", "references"}
# a review is a reviewer's decision in the database (pipeline.review), never a claim in the file
REVIEW_FIELDS = ("reviewed_by", "reviewed_on")
AUTHOR_FIELDS = {"name", "credentials", "bio", "photo"}
REFERENCE_FIELDS = {"text", "url", "cited"}
PUBLISHER_FIELDS = ("company_name", "registered_office", "vat_number", "company_number", "phone", "email")
SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
# Characters XML 1.0 cannot carry (C0 controls other than tab/LF/CR, U+FFFE/U+FFFF):
# lxml refuses them, so one in an article would crash the feed build
XML_INVALID_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int | None
    message: str
    level: str = "error"  # or "warning", or "note" (worth knowing, nothing to fix)

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return f"{where}: {self.level}: {self.message}"


class LibraryError(ContentError):
    """The library has errors; ``problems`` lists all of them (warnings too)."""

    def __init__(self, problems: list[Problem]):
        errors = [p for p in problems if p.level == "error"]
        first = errors[0] if errors else None
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{first.message}{more}" if first else "library has errors",
                         path=first.path if first else None, line=first.line if first else None)
        self.problems = problems


@dataclass(frozen=True)
class Library:
    settings: Settings
    authors: dict[str, Author]
    articles: tuple[Article, ...]  # oldest published first: the queue order
    warnings: tuple[Problem, ...] = field(default=(), compare=False)
    # slug -> digest of the article's inputs, when loaded through a ContentCache (the site
    # build uses it as the page's input key; without it, it hashes the Article itself)
    input_keys: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def article(self, slug: str) -> Article:
        for article in self.articles:
            if article.slug == slug:
                return article
        raise ContentError(f"no article with slug {slug!r}")


class _Collector:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def error(self, path: Path, line: int | None, message: str) -> None:
        self.problems.append(Problem(path, line, message, "error"))

    def warning(self, path: Path, line: int | None, message: str) -> None:
        self.problems.append(Problem(path, line, message, "warning"))

    def note(self, path: Path, line: int | None, message: str) -> None:
        self.problems.append(Problem(path, line, message, "note"))


# -- YAML with line numbers -----------------------------------------------------

def _key_lines(text: str, first_line: int = 1) -> dict[str, int]:
    """Line of each top-level key, and of each list item under ``references``
    (as ``references.N``), for error messages."""
    lines: dict[str, int] = {}
    try:
        node = yaml.compose(text, Loader=FAST_LOADER)
    except yaml.YAMLError:
        return lines
    if not isinstance(node, yaml.MappingNode):
        return lines
    for key, value in node.value:
        lines[str(key.value)] = key.start_mark.line + first_line
        if isinstance(value, yaml.MappingNode):
            for k, _ in value.value:
                lines[f"{key.value}.{k.value}"] = k.start_mark.line + first_line
        if isinstance(value, yaml.SequenceNode):
            for i, item in enumerate(value.value, 1):
                lines[f"{key.value}.{i}"] = item.start_mark.line + first_line
                if isinstance(item, yaml.MappingNode):
                    for k, v in item.value:
                        lines[f"{key.value}.{i}.{k.value}"] = k.start_mark.line + first_line
    return lines


# libyaml when present: the pure-Python parser was most of a library load. On any
# error the pure-Python parser runs again, so messages do not depend on which is installed.
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(text: str, path: Path, first_line: int, out: _Collector) -> Any:
    try:
        return yaml.load(text, Loader=FAST_LOADER)
    except yaml.YAMLError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + first_line if mark is not None else first_line
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        out.error(path, line, f"bad YAML: {problem}")
        return None


def _read(path: Path, out: _Collector) -> str | None:
    """The file's text, or None after recording why it cannot be read (a stray
    binary or Latin-1 file must be reported like any other problem, not crash)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        out.error(path, None, f"cannot read the file: {exc.strerror}")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        out.error(path, data[:exc.start].count(b"\n") + 1, f"not UTF-8 text (byte 0x{data[exc.start]:02x})")
        return None
    bad = XML_INVALID_RE.search(text)
    if bad:
        out.error(path, text.count("\n", 0, bad.start()) + 1,
                  f"control character U+{ord(bad.group()):04X} is not allowed (XML feeds cannot carry it)")
    return text.removeprefix("\ufeff")


def _as_date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return None  # a date is wanted, not a time
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            return None
    return None


# -- site and authors --------------------------------------------------------------

def _check_site(settings: Settings, out: _Collector) -> None:
    path = settings.source or Path("site.yaml")
    lines: dict[str, int] = {}
    if path.exists():
        text = _read(path, out)
        lines = _key_lines(text) if text is not None else {}
    for name in ("disclaimer", "privacy_notice"):
        if not isinstance(settings[name], str) or not settings[name].strip():
            out.error(path, lines.get(name), f"site settings lack the {name.replace('_', ' ')}")
    publisher = settings.publisher
    if not isinstance(publisher, dict):
        out.error(path, lines.get("publisher"), "site settings lack the publisher footer (a mapping with "
                  + ", ".join(PUBLISHER_FIELDS) + ")")
    else:
        for name in PUBLISHER_FIELDS:
            value = publisher.get(name)
            if name == "registered_office" and isinstance(value, list):
                value = [line for line in value if isinstance(line, str) and line.strip()]
            elif not isinstance(value, (str, int)) or isinstance(value, bool):
                value = None
            if value in (None, "", []):
                out.error(path, lines.get(f"publisher.{name}", lines.get("publisher")), f"publisher footer lacks {name}")
    base_url = settings.base_url
    if not is_absolute_http_url(base_url) or not base_url.startswith("https://"):
        out.error(path, lines.get("base_url"), f"base_url must be an absolute https URL, got {base_url!r}")
    if not isinstance(settings.topics, dict):
        out.error(path, lines.get("topics"), "topics must be a mapping of topic id -> {name, sensitive}")
    for names, message in legal.problems(settings):
        out.warning(path, next((lines[n] for n in names if n in lines), None), message)


def _load_author(path: Path, out: _Collector) -> Author | None:
    text = _read(path, out)
    if text is None:
        return None
    data = _load_yaml(text, path, 1, out)
    if data is None and not any(p.path == path for p in out.problems):
        out.error(path, 1, "author file is empty")
    if not isinstance(data, dict):
        if data is not None:
            out.error(path, 1, "author file must be a mapping")
        return None
    lines = _key_lines(text)
    ok = True
    for key in sorted(set(data) - AUTHOR_FIELDS):
        out.error(path, lines.get(key), f"unknown author field {key!r}")
    for key in ("name", "credentials", "bio"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            out.error(path, lines.get(key, 1), f"author has no {key}" if data.get(key) in (None, "") or
                      isinstance(data.get(key), str) else f"author {key} must be text")
            ok = False
    if not ok:
        return None
    photo = data.get("photo")
    if photo and not is_absolute_http_url(str(photo)):
        out.error(path, lines.get("photo"), f"photo must be an absolute http(s) URL: {photo!r}")
    return Author(id=path.stem, name=str(data["name"]).strip(), credentials=str(data["credentials"]).strip(),
                  bio=str(data["bio"]).strip(), photo=str(photo) if photo else None)


# -- articles ---------------------------------------------------------------------

def split_front_matter(text: str) -> tuple[str, str, int] | None:
    """Return (front matter, body, line number of the body's first line), or None."""
    lines = text.removeprefix("\ufeff").splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return None
    for i in range(1, len(lines)):
        if lines[i].strip() == "---":
            return "".join(lines[1:i]), "".join(lines[i + 1:]), i + 2
    return None


def _load_article(path: Path, authors: dict[str, Author], topics: dict | None,
                  out: _Collector, today: date | None = None) -> tuple[Article | None, int | None]:
    """The article (None on any error) and the line of its slug."""
    text = _read(path, out)
    if text is None:
        return None, None
    parts = split_front_matter(text)
    if parts is None:
        if text.removeprefix("\ufeff").startswith("---"):
            out.error(path, 1, "the front matter is not closed: no second '---' line")
        else:
            out.error(path, 1, "no YAML front matter (the file must start with a '---' line and close it with another)")
        return None, None
    front, body, body_line = parts
    data = _load_yaml(front, path, 2, out)
    if data is None:
        if not any(p.path == path for p in out.problems):
            out.error(path, 2, "front matter is empty")
        return None, None
    if not isinstance(data, dict):
        out.error(path, 2, "front matter must be a mapping")
        return None, None
    lines = _key_lines(front, 2)
    before = len([p for p in out.problems if p.level == "error"])

    for key in sorted(set(data) - ARTICLE_FIELDS):
        if key in REVIEW_FIELDS:
            out.error(path, lines.get(key), f"{key} cannot be written in the article: a medical review is a "
                      "reviewer's sign-off of this version (`newsletter review approve SLUG`, or the console)")
        else:
            out.error(path, lines.get(key), f"unknown front matter field {key!r}")
    for key in ARTICLE_REQUIRED:
        value = data.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            out.error(path, lines.get(key, 1), f"front matter is missing required field {key!r}")
        elif key in ("title", "summary", "slug", "author") and not isinstance(value, str):
            out.error(path, lines.get(key), f"{key} must be text, got {type(value).__name__} {value!r}")

    slug = data.get("slug") if isinstance(data.get("slug"), str) else ""
    if slug and not SLUG_RE.match(slug):
        out.error(path, lines.get("slug"), f"slug {slug!r} must be lowercase letters, digits and hyphens")
    elif slug and slug != path.stem:
        out.warning(path, lines.get("slug"), f"slug {slug!r} differs from the file name {path.name!r} "
                    "(articles are content/articles/<slug>.md)")

    published = _as_date(data.get("published")) if data.get("published") is not None else None
    if data.get("published") is not None and published is None:
        out.error(path, lines.get("published"), f"published must be a date (YYYY-MM-DD), got {data['published']!r}")
    updated = None
    if data.get("updated") is not None:
        updated = _as_date(data["updated"])
        if updated is None:
            out.error(path, lines.get("updated"), f"updated must be a date (YYYY-MM-DD), got {data['updated']!r}")
        elif published and updated < published:
            out.error(path, lines.get("updated"), "updated is earlier than published")
        elif today and updated > today:
            out.error(path, lines.get("updated"), f"updated {updated} is in the future (today is {today}): "
                      "an article can only be corrected on or before today")
    if published and today and published > today:
        out.note(path, lines.get("published"), f"published {published} is in the future: the article is embargoed "
                 "(kept out of the feeds, the archive and every send) until that day")

    author = None
    author_id = data.get("author")
    if author_id and isinstance(author_id, str):
        author = authors.get(author_id)
        if author is None:
            out.error(path, lines.get("author"), f"unknown author {author_id!r} (no "
                      f"{path.parent.parent / 'authors' / (author_id + '.yaml')}, or it has errors)")

    raw_topics = data.get("topics") or []
    if not isinstance(raw_topics, list):
        out.error(path, lines.get("topics"), "topics must be a list")
        raw_topics = []
    for i, topic in enumerate(raw_topics, 1):
        if topics is not None and str(topic) not in topics:
            out.error(path, lines.get(f"topics.{i}", lines.get("topics")), f"unknown topic {topic!r} (not in site settings)")

    references = _load_references(data.get("references"), path, lines, out)

    toks = markup.tokens(body)  # parsed once for every check below
    if not body.strip():
        # point at the closing '---': the body's first line may not exist
        out.error(path, body_line - 1, "the article body is empty (nothing after the front matter)")
    else:
        check_body(body, body_line, len(references) if references is not None else None, path, out, toks=toks)
        summary = data.get("summary")
        if isinstance(summary, str) and markup.repeats_opening(summary, body,
                                                               first_paragraph=markup.opening(body, toks)):
            out.warning(path, lines.get("summary"), "the summary copies the body's first sentence(s); it is not "
                        "shown as a standfirst (it would say the opening twice): write one that adds to the opening")
    if references:
        cited = {n for _, n in citation_lines(body, toks)}
        for ref in references:
            if ref.number not in cited:
                out.warning(path, lines.get(f"references.{ref.number}"), f"reference {ref.number} is never cited")

    if len([p for p in out.problems if p.level == "error"]) > before or author is None or published is None:
        return None, lines.get("slug")
    return Article(slug=slug, title=" ".join(str(data["title"]).split()), summary=" ".join(str(data["summary"]).split()),
                   published=published, updated=updated, author=author, body=body,
                   topics=tuple(str(t) for t in raw_topics), references=tuple(references or ()),
                   source=path, body_line=body_line), lines.get("slug")


def _load_references(raw: Any, path: Path, lines: dict[str, int], out: _Collector) -> list[Reference] | None:
    if raw is None:
        return []
    if not isinstance(raw, list):
        out.error(path, lines.get("references"), "references must be a list")
        return None
    refs: list[Reference] = []
    for i, item in enumerate(raw, 1):
        line = lines.get(f"references.{i}")
        if isinstance(item, str):
            item = {"text": item}
        elif item is None:
            item = {}  # a bare "-": reported below as having neither text nor URL
        if not isinstance(item, dict):
            out.error(path, line, f"reference {i} must be a mapping with text, url and cited")
            continue
        for key in sorted(set(item) - REFERENCE_FIELDS):
            out.error(path, lines.get(f"references.{i}.{key}", line), f"reference {i} has unknown field {key!r}")
        text = " ".join(str(item.get("text") or "").split())
        url = str(item.get("url") or "").strip() or None
        if not text and not url:
            out.error(path, line, f"reference {i} has neither text nor URL")
        if url and not is_absolute_http_url(url):
            out.error(path, lines.get(f"references.{i}.url", line), f"reference {i} URL is not absolute http(s): {url!r}")
        cited = None
        if item.get("cited") is not None:
            cited = _as_date(item["cited"])
            if cited is None:
                out.error(path, lines.get(f"references.{i}.cited", line), f"reference {i} cited must be a date, got {item['cited']!r}")
        refs.append(Reference(number=i, text=" ".join(text.split()), url=url, cited=cited))
    return refs




def _site_today(settings: Settings) -> date:
    """Today where the library is published (the content cache keeps no future article)."""
    try:
        return clock.now().astimezone(ZoneInfo(str(settings.timezone))).date()
    except (ZoneInfoNotFoundError, ValueError):
        return clock.now().date()


# -- the library --------------------------------------------------------------------

def _load_article_cached(path: Path, authors: dict[str, Author], topics: dict | None, out: _Collector,
                         cache: ContentCache, context: str, today: date) -> tuple[Article | None, int | None]:
    """``_load_article`` through the content cache, keyed by the file's bytes (always read)."""
    try:
        with open(path, "rb") as handle:
            file_stamp = versions.stamp(os.fstat(handle.fileno()))  # before the read: see content/versions.py
            data = handle.read()
    except OSError:
        return _load_article(path, authors, topics, out)  # reports why
    sha = file_sha(data)
    versions.note(path, file_stamp, data, sha)
    hit = cache.get(path, data, context, authors, sha)
    if hit is not None:
        article, slug_line, problems = hit
        out.problems.extend(Problem(path, line, message, level) for level, line, message in problems)
        return article, slug_line
    own = _Collector()
    article, slug_line = _load_article(path, authors, topics, own)
    out.problems.extend(own.problems)
    cache.put(path, data, context, article, slug_line, [(p.level, p.line, p.message) for p in own.problems
                                                        if p.path == path], embargoed_after=today, sha=sha)
    return article, slug_line


def check_library(content_dir: Path | str = "content", settings: Settings | None = None, *,
                  cache_dir: Path | str | None = None) -> tuple[Library | None, list[Problem]]:
    """Load everything and return (library or None, every problem found).

    Like a compiler, it keeps going after an error: when the site settings cannot
    be loaded, authors and articles are still checked (without the topic list).
    With ``cache_dir``, each article's check result is kept there (``ContentCache``)
    and reused while the file's bytes, the authors, the topics and the code are the same."""
    content_dir = Path(content_dir)
    out = _Collector()
    if settings is None:
        try:
            settings = load_settings(content_dir)
        except ContentError as exc:
            out.error(exc.path or content_dir / "site.yaml", exc.line, exc.message)
    if settings is not None:
        _check_site(settings, out)
    authors: dict[str, Author] = {}
    for path in sorted((content_dir / "authors").glob("*.yaml")):
        author = _load_author(path, out)
        if author:
            authors[author.id] = author
    articles: list[Article] = []
    seen: dict[str, Path] = {}
    article_paths = sorted((content_dir / "articles").glob("*.md"), key=lambda p: p.name)  # one folder
    if not article_paths:
        out.warning(content_dir / "articles", None, "no articles")
    topics = settings.topics if settings is not None and isinstance(settings.topics, dict) else None
    cache = ContentCache(cache_dir) if cache_dir is not None else None
    context = ContentCache.context(authors, topics) if cache is not None else ""
    today = clock.now().date() if settings is None else _site_today(settings)
    for path in article_paths:
        if cache is not None:
            article, slug_line = _load_article_cached(path, authors, topics, out, cache, context, today)
        else:
            article, slug_line = _load_article(path, authors, topics, out, today)
        if article is None:
            continue
        if article.slug in seen:
            out.error(path, slug_line, f"duplicate slug {article.slug!r} (also in {seen[article.slug]})")
            continue
        seen[article.slug] = path
        articles.append(article)
    articles.sort(key=lambda a: (a.published, a.slug))
    if cache is not None:
        # a library with errors builds nothing, so it creates no cache folder either
        cache.save(create=not any(p.level == "error" for p in out.problems))
    if settings is None or any(p.level == "error" for p in out.problems):
        return None, out.problems
    warnings = tuple(p for p in out.problems if p.level == "warning")
    input_keys = {a.slug: cache.input_keys[str(a.source)] for a in articles} if cache is not None else {}
    return (Library(settings=settings, authors=authors, articles=tuple(articles), warnings=warnings,
                    input_keys=input_keys), out.problems)


def load_library(content_dir: Path | str = "content", settings: Settings | None = None) -> Library:
    """Load and check the library; raise ``LibraryError`` listing every problem on any error."""
    library, problems = check_library(content_dir, settings)
    if library is None:
        raise LibraryError(problems)
    return library
