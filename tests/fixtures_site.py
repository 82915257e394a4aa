"""Helpers for the feeds and archive tests: extra articles, a sample rendered issue,
and a real uvicorn server on 127.0.0.1 in a thread."""
from __future__ import annotations

from datetime import date
from pathlib import Path

from pipeline.content.library import Library
from pipeline.rendering.issue import PLACEHOLDERS, Issue, RenderedIssue

from conftest import free_port, serve  # noqa: F401  (serve is re-exported for the site tests)


def write_article(content_dir: Path, slug: str, published: str, *, title: str | None = None,
                  topics: tuple[str, ...] = ("wellbeing",), updated: str | None = None,
                  body: str | None = None) -> Path:
    """Add a small valid article with two cited references to a content folder."""
    title = title or f"Article {slug}"
    lines = ["---", f"title: {title}", f"slug: {slug}",
             f"summary: A short summary of {slug} for feed readers.", f"published: {published}"]
    if updated:
        lines.append(f"updated: {updated}")
    lines += ["author: amy-murtagh", "topics:", *[f"  - {t}" for t in topics], "references:",
              f"  - text: First source about {slug}.", f"    url: https://example.org/{slug}/first",
              "    cited: 2023-01-05",
              f"  - text: Second source about {slug}, a journal without a URL.", "---"]
    body = body or (f"Opening paragraph about {slug}, with a claim.[^1]\n\n## Details\n\n"
                    f"More detail that cites both sources.[^1,2]\n")
    path = content_dir / "articles" / f"{slug}.md"
    path.write_text("\n".join(lines) + "\n" + body, encoding="utf-8")
    return path


def sample_issue(library: Library, on: date, number: int, slugs: tuple[str, ...]) -> RenderedIssue:
    """A rendered issue built by hand (the render stage is another area's): a document with
    every per-subscriber placeholder in it, as render_issue leaves them."""
    articles = tuple(library.article(s) for s in slugs)
    issue = Issue(date=on, number=number, articles=articles)
    base = library.settings.base_url.rstrip("/")
    html = ("<!DOCTYPE html>\n<html lang=\"en-GB\" dir=\"ltr\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{articles[0].title}</title></head>"
            f"<body><main><p>{PLACEHOLDERS['greeting']}</p><h1>{articles[0].title}</h1>"
            f"<p><a href=\"{base}/articles/{articles[0].slug}/\">Read on the web</a></p>"
            f"<p><a href=\"{PLACEHOLDERS['preferences_url']}\">Preferences</a> · "
            f"<a href=\"{PLACEHOLDERS['unsubscribe_url']}\">Unsubscribe</a></p></main></body></html>\n")
    text = f"{PLACEHOLDERS['greeting']}\n{articles[0].title}\nUnsubscribe: {PLACEHOLDERS['unsubscribe_url']}\n"
    return RenderedIssue(issue=issue, subject=articles[0].title, preheader=articles[0].summary, html=html,
                         text=text, web_url=f"{base}/issues/{issue.key}/")


