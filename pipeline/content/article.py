"""The library's values: authors, references and articles.

Frozen dataclasses made by the content stage (``pipeline.content.library``) and read by
every later stage.  An article's ``body`` stays Markdown with citation markers
(``[^1]``, ``[^1,2]``); ``pipeline.content.markup`` turns it into HTML or text.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path


@dataclass(frozen=True)
class Author:
    id: str
    name: str
    credentials: str
    bio: str
    photo: str | None = None


@dataclass(frozen=True)
class Reference:
    number: int  # 1-based, the number citations use
    text: str
    url: str | None = None
    cited: date | None = None


@dataclass(frozen=True)
class Reviewer:
    """The clinician who signed an article version off, as they were when they did."""

    name: str
    credentials: str = ""
    bio: str = ""
    photo: str | None = None

    def __str__(self) -> str:  # "NAME, CREDENTIALS": the "Medically reviewed by" line
        return f"{self.name}, {self.credentials}" if self.credentials else self.name


@dataclass(frozen=True)
class Article:
    slug: str
    title: str
    summary: str
    published: date
    author: Author
    body: str  # Markdown with citation markers
    topics: tuple[str, ...] = ()
    references: tuple[Reference, ...] = ()
    updated: date | None = None
    source: Path | None = field(default=None, compare=False)
    body_line: int = field(default=1, compare=False)  # line of the body's first line in source
    # medical sign-off of this version, and only that (pipeline.review.reviews.attach sets them from the
    # review table; front matter cannot claim a review): who approved it and on which date
    reviewed_by: "Reviewer | None" = None
    reviewed_on: date | None = None

    @property
    def last_modified(self) -> date:
        return self.updated or self.published

    def reference(self, number: int) -> Reference:
        return self.references[number - 1]
