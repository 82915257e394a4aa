"""The archive's shape: pages of ``archive_page_size`` articles, ``sitemap.xml`` and ``robots.txt``.

``index.html`` is page 1 (the issues, then the newest articles); page N is
``page/N/index.html``. A public topic's archive has the same shape under its folder
(``topics/<id>/index.html``, ``topics/<id>/page/N/index.html``; ``pipeline.site.topics``). Every link, including prev/next, is derived from
``base_url``, so a site served under a path prefix works. The sitemap lists the
archive pages, every published article (``lastmod`` = its last-modified date) and
every published issue; it stays within the protocol's 50,000-URL limit up to
about 49,000 articles and issues.
"""
from __future__ import annotations

from dataclasses import dataclass
from html import escape

from pipeline.content.cache import digest
from pipeline.site.views import ArticleView, site_url
from pipeline.settings import Settings

SITEMAP_FILE = "sitemap.xml"
ROBOTS_FILE = "robots.txt"
PAGES_DIR = "page"


@dataclass(frozen=True)
class ArchivePage:
    number: int  # 1-based
    count: int  # how many pages in all
    views: tuple[ArticleView, ...]  # newest first
    folder: str = ""  # "" for the whole archive, "topics/<id>/" for a topic's

    @property
    def file(self) -> str:
        return f"{self.folder}index.html" if self.number == 1 else f"{self.folder}{PAGES_DIR}/{self.number}/index.html"


def page_url(settings: Settings, number: int, folder: str = "") -> str:
    return site_url(settings, folder) if number == 1 else site_url(settings, f"{folder}{PAGES_DIR}/{number}/")


def page_size(settings: Settings) -> int:
    return max(int(settings.archive_page_size), 1)


def paginate(views: list[ArticleView], settings: Settings, folder: str = "") -> list[ArchivePage]:
    """The archive pages; there is always a page 1, even with no article."""
    size = page_size(settings)
    chunks = [tuple(views[i:i + size]) for i in range(0, len(views), size)] or [()]
    return [ArchivePage(n, len(chunks), chunk, folder) for n, chunk in enumerate(chunks, 1)]


def page_key(page: ArchivePage, issues: list) -> str:
    """The inputs of one archive page: what it shows of each article, its place among
    the pages, and (page 1 only) the issues."""
    shown = [(v.url, v.published_at.isoformat(), v.article.title, v.summary, v.article.author.name)
             for v in page.views]
    return digest(repr(shown), page.folder, str(page.number), str(page.count),
                  repr(issues) if page.number == 1 else "")


def pagination(page: ArchivePage, settings: Settings) -> dict:
    """Template values for the page's position and its prev/next links (None at either end)."""
    return {"number": page.number, "count": page.count,
            "prev": page_url(settings, page.number - 1, page.folder) if page.number > 1 else None,
            "next": page_url(settings, page.number + 1, page.folder) if page.number < page.count else None}


def sitemap(settings: Settings, pages: list[ArchivePage], views: list[ArticleView], issues: list) -> str:
    """sitemap.xml (sitemaps.org 0.9): archive pages (the topics' too), articles, then issues."""
    rows = [f"<url><loc>{escape(page_url(settings, p.number, p.folder))}</loc></url>" for p in pages]
    # a retracted article's page is noindex: not listed; a corrected one's lastmod moves with the correction
    rows += [f"<url><loc>{escape(v.url)}</loc><lastmod>{v.updated_at.date().isoformat()}</lastmod></url>"
             for v in views if not v.retraction]
    rows += [f"<url><loc>{escape(i.url)}</loc><lastmod>{i.date.isoformat()}</lastmod></url>" for i in issues]
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n'
            + "".join(row + "\n" for row in rows) + "</urlset>\n")


def robots(settings: Settings) -> str:
    """Everything may be crawled; the sitemap is named. (Crawlers read robots.txt only at a
    host's root: under a path prefix, serve this file from the root or submit the sitemap.)"""
    return f"User-agent: *\nAllow: /\nSitemap: {site_url(settings, SITEMAP_FILE)}\n"
