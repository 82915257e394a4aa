"""Site stage: the static web archive in ``public/``.

``build_site(library, public_dir)`` (re)writes, from the checked library:

- ``articles/<slug>/index.html``: each published article as a page;
- ``feed.xml``, ``atom.xml``, ``feed.json`` (``pipeline.site.feeds``);
- ``index.html``: the archive of every issue and article, newest first;
- ``404.html``: the page the static server shows for a missing path.

``publish_issue(rendered, public_dir, settings=...)`` writes ``issues/<key>/index.html``, the
"view in browser" copy of a rendered issue with its per-subscriber
placeholders filled with non-personal links, and an ``issue.json`` sidecar.
The archive lists issues from those sidecars, so a published issue stays in
the archive across later builds and ``build_site`` needs no database.

Every file goes through ``SiteWriter``, which rewrites a file only when its
bytes change: an unchanged rebuild is byte-identical and keeps mtimes (and so
the static server's ``Last-Modified``) stable.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path, PurePosixPath

from pipeline.content.library import Library
from pipeline.errors import ContentError, RenderError
from pipeline.site import archive, icons, issue_page, parallel, topics
from pipeline.site.archive import ArchivePage
from pipeline.content.cache import digest
from pipeline.site.buildcache import SiteManifest, article_key, build_hash
from pipeline.site.feeds import FEEDS, channel_feeds, site_channel
from pipeline.site.views import TEMPLATES, ArticleView, public_articles, site_url, today, web_templates
from pipeline.site.meta import article_jsonld, article_meta, reviewed, script_json
from pipeline.site.topics import TopicArchive, feed_links
from pipeline.rendering.issue import PLACEHOLDERS, Personal, RenderedIssue, personalise
from pipeline.settings import Settings

ISSUES_DIR = "issues"
ARTICLES_DIR = "articles"
ISSUE_SIDECAR = "issue.json"
NOT_FOUND_PAGE = "404.html"
# Non-personal stand-ins for the per-subscriber links of a published issue: pages of the
# web service where a reader identifies themselves (nothing here names a subscriber).
PUBLIC_LINKS = {"unsubscribe_url": "unsubscribe", "preferences_url": "preferences"}
PUBLIC_GREETING = "Hello,"
ICONS_KEY = "icons"  # the icons depend on the code only, which is in the build hash


# -- the one writer ------------------------------------------------------------------

@dataclass
class SiteWriter:
    """Writes files under ``root``; a file is replaced only when its bytes change.

    The new bytes go to a temporary file in the same folder, then ``os.replace``
    swaps it in, so a server never serves half a file."""

    root: Path
    manifest: SiteManifest | None = None  # what we wrote before: skips reading unchanged files back
    reuse: bool = True  # False: record in the manifest, but trust nothing it says (a full build)
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def target(self, relative: str) -> Path:
        parts = PurePosixPath(relative).parts
        if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
            raise ValueError(f"output path must stay inside {self.root}: {relative!r}")
        return self.root.joinpath(*parts)

    def fresh(self, relative: str, key: str) -> bool:
        """True (and counted as unchanged) when the manifest says ``relative`` was made from
        inputs ``key`` and the file has not been touched since: the caller need not render it."""
        if not self.reuse or self.manifest is None \
                or not self.manifest.fresh(relative, os.path.join(self.root, *relative.split("/")), key):
            return False
        self.unchanged.append(relative)
        return True

    def write(self, relative: str, data: bytes | str, *, key: str | None = None) -> bool:
        """Write ``data`` to ``relative``; return True when the file changed. ``key`` names the
        inputs ``data`` was made from, for ``fresh`` on the next build."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        path = self.target(relative)
        sha = digest(data) if self.manifest is not None else ""
        try:
            if (self.reuse and self.manifest is not None and self.manifest.same_bytes(relative, path, sha)) \
                    or path.read_bytes() == data:
                self.unchanged.append(relative)
                if self.manifest is not None:
                    self.manifest.record(relative, path, sha, key)
                return False
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; the web server must be able to read it
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.written.append(relative)
        if self.manifest is not None:
            self.manifest.record(relative, path, sha, key)
        return True

    def adopt(self, relative: str, changed: bool, entry: list | None) -> None:
        """Take in the outcome of a ``write`` a worker process made with a copy of this writer
        (``pipeline.site.parallel``): whether the file changed, and its manifest entry."""
        (self.written if changed else self.unchanged).append(relative)
        if self.manifest is not None and entry is not None:
            self.manifest.adopt(relative, entry)

    def remove_tree(self, relative: str) -> None:
        path = self.target(relative)
        if path.is_dir():
            shutil.rmtree(path)
            self.removed.append(relative)
        if self.manifest is not None:
            self.manifest.forget_under(relative)

    def report(self) -> "BuildReport":
        return BuildReport(tuple(self.written), tuple(self.unchanged), tuple(self.removed))


@dataclass(frozen=True)
class BuildReport:
    written: tuple[str, ...]  # created or changed
    unchanged: tuple[str, ...]
    removed: tuple[str, ...] = ()

    def __add__(self, other: "BuildReport") -> "BuildReport":
        return BuildReport(self.written + other.written, self.unchanged + other.unchanged,
                           self.removed + other.removed)


# -- issues ---------------------------------------------------------------------------

@dataclass(frozen=True)
class IssueRecord:
    """A published issue as the archive knows it (from its ``issue.json``); no subscriber data."""

    key: str
    date: date
    number: int
    kind: str
    subject: str
    articles: tuple[str, ...]  # slugs, lead first
    url: str


def issue_url(settings: Settings, key: str) -> str:
    return site_url(settings, f"{ISSUES_DIR}/{key}/")


def _base_url_of(rendered: RenderedIssue) -> str:
    suffix = f"/{ISSUES_DIR}/{rendered.issue.key}/"
    if not rendered.web_url.startswith("https://") or not rendered.web_url.endswith(suffix):
        raise RenderError(f"issue {rendered.issue.key}: web_url {rendered.web_url!r} is not "
                          f"<base_url>{suffix}, so the archive cannot place it")
    return rendered.web_url[: -len(suffix)]


def publish_issue(rendered: RenderedIssue, public_dir: Path | str, *, settings: Settings,
                  base_url: str | None = None) -> BuildReport:
    """Write the "view in browser" page of an issue and its ``issue.json`` sidecar.

    The per-subscriber placeholders become public links (``{base_url}/unsubscribe``,
    ``{base_url}/preferences``) and a plain greeting, so the page carries no token
    and no subscriber data. ``base_url`` defaults to the one ``rendered.web_url`` is under.
    The email-only text goes and the page gets its canonical link, feed links and a
    ``<main>`` landmark (``pipeline.site.issue_page``)."""
    base = (base_url or _base_url_of(rendered)).rstrip("/")
    issue = rendered.issue
    personal = Personal(greeting=PUBLIC_GREETING,
                        **{key: f"{base}/{page}" for key, page in PUBLIC_LINKS.items()})
    html, _text = personalise(rendered, personal)
    leftover = [name for name, placeholder in PLACEHOLDERS.items() if placeholder in html]
    if leftover or "personalise.invalid" in html:
        raise RenderError(f"issue {issue.key}: placeholders left in the web copy: {', '.join(leftover) or 'unknown'}")
    html = issue_page.web_copy(html, settings, rendered.web_url, feed_links(settings), rendered.preheader)
    record = {
        "key": issue.key,
        "date": issue.date.isoformat(),
        "number": issue.number,
        "kind": issue.kind,
        "subject": rendered.subject,
        "articles": [a.slug for a in issue.articles],
        "url": rendered.web_url,
    }
    writer = SiteWriter(Path(public_dir))
    writer.write(f"{ISSUES_DIR}/{issue.key}/index.html", html)
    writer.write(f"{ISSUES_DIR}/{issue.key}/{ISSUE_SIDECAR}",
                 json.dumps(record, ensure_ascii=False, indent=2) + "\n")
    return writer.report()


def published_issues(public_dir: Path | str) -> list[IssueRecord]:
    """Every published issue, newest first, read from ``issues/*/issue.json``.
    A malformed sidecar is an error naming the file, not a silently shorter archive."""
    records = []
    for path in sorted(Path(public_dir, ISSUES_DIR).glob(f"*/{ISSUE_SIDECAR}")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            records.append(IssueRecord(key=str(data["key"]), date=date.fromisoformat(data["date"]),
                                       number=int(data["number"]), kind=str(data.get("kind", "daily")),
                                       subject=str(data["subject"]), articles=tuple(map(str, data["articles"])),
                                       url=str(data["url"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise ContentError(f"unreadable issue record: {exc}", path=path) from None
        if records[-1].key != path.parent.name:
            raise ContentError(f"issue record key {records[-1].key!r} does not match its folder", path=path)
    records.sort(key=lambda r: (r.date, r.key), reverse=True)
    return records


# -- pages -------------------------------------------------------------------------------

def _render(template: str, settings: Settings, feeds: list[dict[str, str]] | None = None, **context) -> str:
    return web_templates().get_template(template).render(settings=settings, feeds=feeds or feed_links(settings),
                                                         **context)


def article_page(view: ArticleView, settings: Settings, topic_urls: dict[str, str] | None = None) -> str:
    """An article's page; ``topic_urls`` (topic id -> page) link its public topics and add their feeds."""
    topic_urls = topic_urls or {}
    feeds = feed_links(settings)
    for topic in view.topics:
        if topic.id in topic_urls:
            feeds += feed_links(settings, topics.channel(settings, topic))
    template = "article_retracted.html" if view.retraction else "article.html"
    if not view.retraction:
        view.page_body_html  # first: its one parse also gives the standfirst and the lead image
    return _render(template, settings, feeds=feeds, view=view, article=view.article, page_url=view.url,
                   meta=article_meta(view, settings), jsonld=script_json(article_jsonld(view, settings)),
                   review=reviewed(view), topic_urls=topic_urls)


def archive_page(page: ArchivePage, issues: list[IssueRecord], settings: Settings,
                 topic_list: list[TopicArchive] = (), topic: TopicArchive | None = None) -> str:
    """A page of the archive, or (with ``topic``) of a topic's archive."""
    titles = {v.article.slug: v.article.title for v in page.views}
    feeds = feed_links(settings, topic.channel) + feed_links(settings) if topic else feed_links(settings)
    return _render("archive.html", settings, feeds=feeds, views=list(page.views), issues=issues, titles=titles,
                   page_url=archive.page_url(settings, page.number, page.folder),
                   pages=archive.pagination(page, settings), topic=topic, topic_list=list(topic_list))


NOTICE_START, NOTICE_END = "<!-- corrections: start -->", "<!-- corrections: end -->"


def _mark_issue(writer: SiteWriter, issue: IssueRecord, notices: dict, settings: Settings) -> None:
    """Put the corrections and retractions of an issue's articles above its old text (which
    stays: it is what was sent), replacing what an earlier build put there."""
    path = writer.target(f"{ISSUES_DIR}/{issue.key}/index.html")
    found = [notices[slug] for slug in issue.articles if slug in notices]
    if not path.is_file() or not found:
        return
    html = path.read_text(encoding="utf-8")
    start, end = html.find(NOTICE_START), html.find(NOTICE_END)
    if start != -1 and end != -1:
        html = html[:start] + html[end + len(NOTICE_END):]
    body = re.search(r"<body\b[^>]*>", html)
    if body is None:
        return
    block = _render("_issue_notice.html", settings, found=found, issue=issue).strip()
    html = html[:body.end()] + NOTICE_START + block + NOTICE_END + html[body.end():]
    writer.write(f"{ISSUES_DIR}/{issue.key}/index.html", html)


def _remove_withdrawn(writer: SiteWriter, folder: str, keep: set[str]) -> None:
    """Remove each sub-folder of ``folder`` not in ``keep``: a withdrawn (or future-dated)
    article must not stay online, nor an archive page past the last one."""
    root = writer.root / folder
    if not root.is_dir():
        return
    with os.scandir(root) as entries:
        names = sorted(e.name for e in entries if e.is_dir() and e.name not in keep)
    for name in names:
        writer.remove_tree(f"{folder}/{name}")


def build_site(library: Library, public_dir: Path | str, *, as_of: date | None = None,
               incremental: bool = True, notices: dict | None = None) -> BuildReport:
    """(Re)write the article pages, feeds, archive pages, sitemap, robots.txt and 404 page.
    Idempotent: a second run without content changes writes nothing. Articles dated after
    ``as_of`` (default: today in the site's time zone) are left out; a page of an article no
    longer published is removed.

    Incremental: ``<public_dir>/.cache/site.json`` (``SiteManifest``) records the inputs of
    each file, so only pages whose inputs changed are rendered; a change of templates,
    settings or code renders everything. ``incremental=False`` ignores the record (the output
    is the same, byte for byte).

    ``notices`` (slug -> ``pipeline.corrections.notices.ArticleNotices``) are the corrections and
    retractions to show on the article pages, in the feeds and on the issue pages that carried them."""
    settings = library.settings
    notices = notices or {}
    as_of = as_of or today(settings)
    public_dir = Path(public_dir)
    views = public_articles(library, as_of, notices)  # cheap: a view renders its Markdown only when a page needs it
    if not views:
        raise ContentError("no published articles to put in the feeds", path=Path("articles"))
    topic_list = topics.topic_archives(settings, views)
    issues = published_issues(public_dir)
    manifest = SiteManifest(public_dir, build_hash(settings, TEMPLATES.parent))
    writer = SiteWriter(public_dir, manifest, reuse=incremental)
    # the feeds first: one that cannot be built fails the build before any page is written
    feeds = _feeds(library, writer, [(site_channel(settings), views)] + [(t.channel, list(t.views)) for t in topic_list])
    for name in icons.FILES:
        if not writer.fresh(name, ICONS_KEY):
            writer.write(name, icons.file(name), key=ICONS_KEY)
    topic_urls = topics.topic_links(settings, topic_list)
    stale = []
    for view in views:
        relative = f"{ARTICLES_DIR}/{view.article.slug}/index.html"
        # the instants too: a same-day neighbour added or edited moves this article's second
        key = digest(library.input_keys.get(view.article.slug) or article_key(view.article),
                     view.published_at.isoformat(), view.updated_at.isoformat(),
                     repr([topic_urls.get(t) for t in view.article.topics]),
                     view.notices.key if view.notices else "")
        if not writer.fresh(relative, key):
            stale.append((relative, key, view))
    # a fresh view for each page: the rendered body is dropped with it, not kept for 10,000 pages
    parallel.write_pages(writer, stale, lambda view: article_page(replace(view), settings, topic_urls))
    _remove_withdrawn(writer, ARTICLES_DIR, {v.article.slug for v in views})
    for issue in issues:
        _mark_issue(writer, issue, notices, settings)
    for name, (data, key) in feeds.items():
        writer.write(name, data, key=key)
    pages = archive.paginate(views, settings)
    listed = repr([(t.topic, t.channel.home, len(t.views)) for t in topic_list])  # page 1 lists them, with counts
    for page in pages:
        key = digest(archive.page_key(page, issues), listed if page.number == 1 else "")
        if not writer.fresh(page.file, key):
            writer.write(page.file, archive_page(page, issues, settings, topic_list), key=key)
    _remove_withdrawn(writer, archive.PAGES_DIR, {str(p.number) for p in pages[1:]})
    all_pages = list(pages)
    for topic in topic_list:
        topic_pages = archive.paginate(list(topic.views), settings, topics.folder(topic.topic))
        for page in topic_pages:
            key = digest(archive.page_key(page, []), repr(topic.topic))
            if not writer.fresh(page.file, key):
                writer.write(page.file, archive_page(page, [], settings, topic=topic), key=key)
        _remove_withdrawn(writer, f"{topics.folder(topic.topic)}{archive.PAGES_DIR}",
                          {str(p.number) for p in topic_pages[1:]})
        all_pages += topic_pages
    _remove_withdrawn(writer, topics.TOPICS_DIR, {t.topic.id for t in topic_list})
    writer.write(archive.SITEMAP_FILE, archive.sitemap(settings, all_pages, views, issues))
    writer.write(archive.ROBOTS_FILE, archive.robots(settings))
    writer.write(NOT_FOUND_PAGE, _render("not_found.html", settings, page_url=site_url(settings)))
    manifest.save()
    return writer.report()


def _feeds(library: Library, writer: SiteWriter, channels) -> dict[str, tuple[bytes, str]]:
    """Output path -> (bytes, input key) of each feed file to write: only the newest
    ``feed_items`` of a channel are rendered, and only when one of them (or the channel)
    changed or a file was touched."""
    settings = library.settings
    size = max(int(settings.feed_items), 0)
    def input_key(v: ArticleView) -> str:  # a correction or retraction changes the item (its note leads it)
        key = library.input_keys.get(v.article.slug) or article_key(v.article)
        return f"{key}+{v.notices.key}" if v.notices else key
    out: dict[str, tuple[bytes, str]] = {}
    for chan, chan_views in channels:
        items = chan_views[:size]
        if not items:
            raise ContentError("no published articles to put in the feeds (feed_items is 0)", path=Path("articles"))
        key = topics.feeds_key(chan, items, input_key)
        stale = [chan.file(name) for name in FEEDS if not writer.fresh(chan.file(name), key)]
        if stale:
            rendered = channel_feeds(library, items, chan)
            out.update({name: (rendered[name], key) for name in stale})
    return out
