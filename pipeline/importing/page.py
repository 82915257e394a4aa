"""The import's intermediate value (a ``Page`` of blocks) and what the readers and the writer share:
citation numbers in page text, one reference, heading words and slugs."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Iterable

from pipeline.content.article import Author, Reference
from pipeline.content.library import is_absolute_http_url as _is_http_url
from pipeline.errors import ImportError_


# -- the intermediate value -------------------------------------------------------


@dataclass(frozen=True)
class Cite:
    """A citation at one place of the text: one or more reference numbers."""
    numbers: tuple[int, ...]


@dataclass(frozen=True)
class Link:
    text: str
    url: str


Inline = tuple["str | Cite | Link", ...]


@dataclass(frozen=True)
class Heading:
    level: int  # 2 or 3: the title is the page's only h1
    text: Inline
    line: int = field(default=0, compare=False)  # where in the page, for messages


@dataclass(frozen=True)
class Paragraph:
    text: Inline
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class BulletList:
    items: tuple[Inline, ...]
    line: int = field(default=0, compare=False)


Block = Heading | Paragraph | BulletList


@dataclass(frozen=True)
class SiteText:
    """What the page says about the site; compared with site.yaml, never written."""
    disclaimer: str | None = None
    privacy_notice: str | None = None
    terms_notice: str | None = None
    publisher: tuple[tuple[str, str | tuple[str, ...]], ...] = ()  # (field, value) in page order


@dataclass(frozen=True)
class Page:
    source: Path = field(compare=False)
    title: str
    blocks: tuple[Block, ...]
    references: tuple[Reference, ...]
    author: Author
    site: SiteText
    notes: tuple[str, ...] = ()  # things an editor should look at; printed as warnings


# -- citations in page text -------------------------------------------------------

SUPERSCRIPT_DIGITS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
NUMBERS_RE = re.compile(r"^\d+(?:[,\u2013-]\d+)*$")
# characters a citation may follow directly: closing punctuation (Vancouver style puts
# the number after the full stop or bracket: "sweating).3,4")
CLOSERS = set(".,;:!?)]}\"'\u201d\u2019\u00bb")
SENTENCE_END = set(".,;:!?")
# words that conventionally carry a number of their own ("omega3", "covid19")
NUMBERED_WORDS = {"covid", "cov", "sars", "omega", "type", "stage", "grade", "phase", "vitamin", "mp", "ipv"}


def parse_numbers(text: str, reference_count: int) -> tuple[int, ...] | None:
    """"1,2" or "1-3" as reference numbers, or None unless every number is 1..count,
    written without leading zeros, in strictly increasing order."""
    if not NUMBERS_RE.match(text):
        return None
    numbers: list[int] = []
    for part in text.split(","):
        bounds = re.split(r"[\u2013-]", part)
        if any(len(b) > 1 and b.startswith("0") for b in bounds):
            return None
        if len(bounds) == 1:
            numbers.append(int(bounds[0]))
        elif len(bounds) == 2 and int(bounds[0]) < int(bounds[1]):
            numbers.extend(range(int(bounds[0]), int(bounds[1]) + 1))
        else:
            return None
    if any(not 1 <= n <= reference_count for n in numbers):
        return None
    if any(a >= b for a, b in zip(numbers, numbers[1:])):
        return None
    return tuple(numbers)


def _split_candidate(token: str) -> tuple[str, str, str, bool] | None:
    """Split a whitespace-free token into (head, numbers, tail, superscript) when it
    ends with numbers, optionally followed by one punctuation mark."""
    body, tail = token, ""
    if len(token) >= 2 and token[-1] in SENTENCE_END and (token[-2].isdigit() or token[-2] in "⁰¹²³⁴⁵⁶⁷⁸⁹"):
        body, tail = token[:-1], token[-1]
    superscript = body[-1:] in set("⁰¹²³⁴⁵⁶⁷⁸⁹")
    allowed = set("⁰¹²³⁴⁵⁶⁷⁸⁹,") if superscript else set("0123456789,-\u2013")
    start = len(body)
    while start > 0 and body[start - 1] in allowed:
        start -= 1
    while start < len(body) and not body[start].translate(SUPERSCRIPT_DIGITS).isdigit():
        start += 1  # the run starts at a digit: "COVID-19" gives "19", not "-19"
    if start == len(body):
        return None
    return body[:start], body[start:].translate(SUPERSCRIPT_DIGITS), tail, superscript


def _glued(head: str, at_text_end: bool, next_token: str) -> bool:
    """Is a number right after ``head`` glued to the cited text (a citation) rather
    than part of the text ("COVID-19", "£100-350", "BH4", "2.5")?"""
    if not head or "://" in head or head.startswith("www.") or "@" in head:
        return False
    prev = head[-1]
    if prev.isalpha():
        word = re.search(r"[^\W\d_]+$", head).group(0)
        before = head[: -len(word)]
        if before[-1:].isdigit():
            return False  # "H1N1", "3D4"
        # a citation follows a lowercase word; "BH4", "B12", "SPF30" are codes
        return (len(word) >= 2 and word[1:].islower() and word[-1].islower()
                and word.lower() not in NUMBERED_WORDS)
    if prev in CLOSERS and len(head) >= 2:  # a lone "(" or '"' opens rather than closes
        if head[-2].isdigit() and prev in ".,:":
            # "2.5", "1,000", "07:30" are numbers; "£100-350.6" is a citation only where a
            # sentence ends: at the end of the text or before a capital letter.
            return prev == "." and (at_text_end or next_token[:1].isupper())
        return True
    return False


def find_citations(text: str, reference_count: int) -> tuple[Inline, tuple[str, ...]]:
    """Split page text into text and ``Cite`` parts.

    A citation is a run of numbers glued to the end of a word or punctuation mark
    ("types1,2", "sweating).3,4", "£100-350.6") that names existing references.
    Numbers that belong to the text are left alone: a number after a space ("30
    minutes", "SPF 30", "in 2021"), after a hyphen or dash (ranges, "COVID-19"),
    a currency sign or another digit, an upper-case code ("BH4 8DT", "B12"), a decimal
    point inside a sentence ("2.5 mm"), and any number above ``reference_count``.
    Returns the parts and notes about glued numbers that look like citations but
    point past the reference list.
    """
    text = " ".join(text.split())
    tokens = text.split(" ") if text else []
    parts: list[str | Cite] = []
    notes: list[str] = []
    for i, token in enumerate(tokens):
        if i:
            parts.append(" ")
        split = _split_candidate(token)
        if split is None:
            parts.append(token)
            continue
        head, numbers, tail, superscript = split
        at_end = i == len(tokens) - 1
        nxt = tokens[i + 1] if not at_end else ""
        if not (superscript or _glued(head, at_end, nxt)):
            parts.append(token)
            continue
        cited = parse_numbers(numbers, reference_count)
        if cited is None:
            if superscript or (head[-1:].isalpha() and NUMBERS_RE.match(numbers)):
                notes.append(f"{token!r} looks like a citation but there are only {reference_count} "
                             "reference(s) or the numbers are out of order; kept as text")
            parts.append(token)
            continue
        parts.extend([head, Cite(cited), tail])
    return tidy(parts), tuple(notes)


def tidy(parts: Iterable[str | Cite | Link]) -> Inline:
    """Merge adjacent strings, collapse whitespace, glue a citation to what it cites."""
    merged: list[str | Cite | Link] = []
    for part in parts:
        if isinstance(part, str):
            if not part:
                continue
            if merged and isinstance(merged[-1], str):
                merged[-1] += part
                continue
        elif isinstance(part, Cite) and merged and isinstance(merged[-1], str):
            merged[-1] = merged[-1].rstrip()
        merged.append(part)
    out: list[str | Cite | Link] = []
    for i, part in enumerate(merged):
        if isinstance(part, str):
            part = re.sub(r"\s+", " ", part)
            if i == 0:
                part = part.lstrip()
            if i == len(merged) - 1:
                part = part.rstrip()
            if not part:
                continue
        out.append(part)
    return tuple(out)


def plain(text: Inline) -> str:
    """Inline text without its citations (for summaries and comparisons)."""
    return " ".join("".join(p if isinstance(p, str) else p.text if isinstance(p, Link) else "" for p in text).split())


# -- references -------------------------------------------------------------------

MONTH_NAMES = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
               "november", "december"]
MONTHS = {**{m[:3]: i for i, m in enumerate(MONTH_NAMES, 1)}, **{m: i for i, m in enumerate(MONTH_NAMES, 1)},
          "sept": 9}
CITED_RE = re.compile(r"\s*\[cited\s+([^\]]*)\]")
AVAILABLE_RE = re.compile(r"\s*Available from:\s*(\S*)", re.IGNORECASE)


def _cited_date(raw: str) -> date | None:
    """Vancouver "2023 Feb 17" (month abbreviated or in full)."""
    match = re.fullmatch(r"(\d{4})\s+([A-Za-z]+)\.?\s+(\d{1,2})", raw.strip())
    if not match or match.group(2).lower() not in MONTHS:
        return None
    try:
        return date(int(match.group(1)), MONTHS[match.group(2).lower()], int(match.group(3)))
    except ValueError:
        return None


def _cut(text: str, match: re.Match) -> str:
    """Remove ``match`` from ``text`` without leaving a doubled full stop behind."""
    left, right = text[: match.start()].rstrip(), text[match.end():]
    if left.endswith(".") and right.startswith("."):
        right = right[1:]
    return left + right


def parse_reference(number: int, raw: str, path: Path, line: int, href: str | None = None) -> Reference:
    """One entry of the numbered list: "[cited YYYY Mon D]" becomes ``cited`` and
    "Available from: URL" becomes ``url``; both are cut out of the text."""
    text = " ".join(raw.split())
    cited = None
    match = CITED_RE.search(text)
    if match:
        cited = _cited_date(match.group(1))
        if cited is None:
            raise ImportError_(f"reference {number}: cannot read the cited date {match.group(1)!r} "
                               "(expected like '2023 Feb 17')", path=path, line=line)
        text = _cut(text, match)
    url = None
    match = AVAILABLE_RE.search(text)
    if match:
        url = match.group(1).rstrip(".,;")
        if not _is_http_url(url):
            raise ImportError_(f"reference {number}: 'Available from:' is not followed by an absolute "
                               f"http(s) URL (got {url!r})", path=path, line=line)
        text = _cut(text, match)
    elif href and _is_http_url(href):
        url = href
        text = text.replace(href, "").strip()
    text = " ".join(text.split())
    if not any(c.isalnum() for c in text):
        text = ""  # only the punctuation around the cut-out parts was left
    if not text and not url:
        raise ImportError_(f"reference {number} has neither text nor URL", path=path, line=line)
    return Reference(number=number, text=text, url=url, cited=cited)


# -- shared by the readers and the writer ------------------------------------------

REFERENCES_RE = re.compile(r"^(references|sources|bibliography):?$", re.IGNORECASE)
# headings that always open a top-level section, even right after subsections
TOP_LEVEL_HEADINGS = {"summary", "conclusion", "conclusions", "overview", "introduction", "outlook",
                      "takeaway", "faqs", "faq", "references", "sources", "resources"}


def slugify(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
