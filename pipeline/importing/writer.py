"""The one writer: a ``Page`` as ``articles/<slug>.md`` and ``authors/<id>.yaml``. The output depends
only on the page and the options (no clock, no set order), so an import is reproducible byte for byte."""
from __future__ import annotations

import json
import re
import textwrap
from datetime import date
from typing import Iterable, Sequence

import yaml

from pipeline.content.article import Author
from pipeline.importing.page import (Block, BulletList, Cite, Heading, Inline, Link, Page, TOP_LEVEL_HEADINGS, plain,
                                     slugify)


# -- the writer ---------------------------------------------------------------------

# Leading words dropped from slugs, so "What Is Microneedling?" gives "microneedling":
# short, stable URLs that do not change when an editor rewords a question title.
SLUG_STOPWORDS = {"a", "an", "the", "what", "is", "are", "how", "why", "when", "who", "which", "does", "do",
                  "can", "should", "to", "of", "and", "or", "for", "in", "on", "your", "you", "about", "with"}
WIDTH = 88  # front matter lines are folded to this width


def slug_from_title(title: str) -> str:
    words = slugify(title).split("-")
    kept = [w for w in words if w not in SLUG_STOPWORDS]
    return "-".join(kept or words) or "article"


def default_published(page: Page) -> date | None:
    """The latest date a reference was cited.  The page carries no publication date;
    the article cannot predate the research it cites, and the last citation date is
    the closest date on the page to when it was written.  It comes from the page, not
    the clock, so the import stays reproducible."""
    dates = [r.cited for r in page.references if r.cited]
    return max(dates) if dates else None


SUMMARY_LIMIT = 250  # what a preheader shows
# sections every article has, which say nothing about this one
GENERIC_SECTIONS = TOP_LEVEL_HEADINGS | {"references", "faq", "faqs"}
SUMMARY_NOTICE = ("no --summary given: the summary lists the article's sections; write one or two sentences "
                  "that add to the opening (with --summary, or by editing 'summary:' in {path})")


def default_summary(page: Page) -> str:
    """A standfirst proposed from the page's own section headings ("In this article: ..."), never its
    opening sentences: the email, page and feed show the summary above the body, so the
    introduction's first sentences would be said twice.  It is only a proposal, and the
    import says so (``SUMMARY_NOTICE``); without usable headings it is the title."""
    topics = []
    for block in page.blocks:
        if isinstance(block, Heading) and block.level == 2:
            text = " ".join(plain(block.text).split()).rstrip(".:;")  # headings verbatim: no case guessing
            if text and text.rstrip("?!").lower() not in GENERIC_SECTIONS:
                topics.append(text)
    while topics:
        summary = f"In this article: {'; '.join(topics)}."
        if len(summary) <= SUMMARY_LIMIT:
            return summary
        topics.pop()
    return page.title


# Markdown syntax characters escaped in page text, so a page's "*" or "[" stays text
MD_ESCAPE_RE = re.compile(r"([\\`*_\[\]<#])|&(?=#?\w+;)")


def _md_text(text: str, at_start: bool) -> str:
    text = MD_ESCAPE_RE.sub(lambda m: "\\" + (m.group(1) or "&"), text)
    if at_start:
        # a block that starts like a list, quote or fence stays a paragraph
        text = re.sub(r"^([-+>~=])", r"\\\1", text)
        text = re.sub(r"^(\d+)([.)])", r"\1\\\2", text)
    return text


def inline_markdown(parts: Inline) -> str:
    out = []
    for i, part in enumerate(parts):
        if isinstance(part, Cite):
            out.append(f"[^{','.join(map(str, part.numbers))}]")
        elif isinstance(part, Link):
            url = part.url.replace("(", "%28").replace(")", "%29").replace(" ", "%20")
            out.append(f"[{_md_text(part.text, False)}]({url})")
        else:
            out.append(_md_text(part, i == 0))
    return "".join(out)


def render_body(blocks: Iterable[Block]) -> str:
    chunks = []
    for block in blocks:
        if isinstance(block, Heading):
            chunks.append(f"{'#' * block.level} {inline_markdown(block.text)}")
        elif isinstance(block, BulletList):
            chunks.append("\n".join(f"- {inline_markdown(item)}" for item in block.items))
        else:
            chunks.append(inline_markdown(block.text))
    return "\n\n".join(chunks) + "\n"


def _scalar(value: str) -> str:
    """A string as a plain YAML scalar when that reads back unchanged, else double-quoted."""
    if value and value == value.strip():
        try:
            if yaml.safe_load(f"k: {value}") == {"k": value}:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value, ensure_ascii=False)


def _yaml_pair(key: str, value, indent: str, first: str | None = None) -> list[str]:
    lead = first if first is not None else indent
    if isinstance(value, date):
        return [f"{lead}{key}: {value.isoformat()}"]
    if isinstance(value, (list, tuple)):
        if not value:
            return [f"{lead}{key}: []"]
        lines = [f"{lead}{key}:"]
        for item in value:
            if isinstance(item, dict):
                for n, (k, v) in enumerate(item.items()):
                    lines += _yaml_pair(k, v, indent + "    ", first=indent + "  - " if n == 0 else None)
            else:
                lines.append(f"{indent}  - {_scalar(str(item))}")
        return lines
    line = f"{lead}{key}: {_scalar(value)}"
    if len(line) <= WIDTH or " " not in value or "\n" in value:
        return [line]
    # folded block: the line breaks read back as single spaces (the text has no runs of spaces)
    body = textwrap.wrap(value, WIDTH - len(indent) - 2, break_long_words=False, break_on_hyphens=False)
    return [f"{lead}{key}: >-"] + [f"{indent}  {l}" for l in body]


def render_yaml(data: dict) -> str:
    lines: list[str] = []
    for key, value in data.items():
        lines += _yaml_pair(key, value, "")
    text = "\n".join(lines) + "\n"
    expected = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()}
    if yaml.safe_load(text) != expected:  # the emitter is ours, so prove it round-trips
        raise RuntimeError(f"YAML writer bug: {text!r} does not read back as {expected!r}")
    return text


def render_author(author: Author) -> str:
    return render_yaml({"name": author.name, "credentials": author.credentials, "bio": author.bio})


def render_article(page: Page, *, slug: str, published: date, topics: Sequence[str], summary: str) -> str:
    references = []
    for ref in page.references:
        item: dict = {"text": ref.text}
        if ref.url:
            item["url"] = ref.url
        if ref.cited:
            item["cited"] = ref.cited
        references.append(item)
    front = render_yaml({
        "title": page.title,
        "slug": slug,
        "summary": " ".join(summary.split()),
        "published": published,
        "author": page.author.id,
        "topics": list(topics),
        "references": references,
    })
    return f"---\n{front}---\n{render_body(page.blocks)}"
