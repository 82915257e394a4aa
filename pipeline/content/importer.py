"""Import stage: a library page becomes an article file and an author file.

Two readers, chosen by file type, turn a page into the same ``Page`` value:

- ``read_text`` reads the page-text layout (``shared/seeds/microneedling-guide.txt``):
  one block per line, blank lines between blocks, ``•`` bullets, citation numbers
  glued to the cited word ("types1,2"), a "References" line and a numbered list;
- ``read_html`` reads an HTML page with the same structure: ``h1``/``h2``/``h3``,
  ``ul``/``li``, ``<sup>`` citation numbers and an ``ol`` reference list.

After the reference list both layouts carry the same trailer, read by one function
(``_read_trailer``): the disclaimer, the newsletter sign-up box (dropped; its privacy
notice is kept for comparison), the author block, the comment form (dropped) and the
footer (terms notice, the site description, which is dropped, and the publisher block).

One writer (``render_article`` and ``render_author``, written by ``import_page``) turns a
``Page`` into ``articles/<slug>.md`` and ``authors/<id>.yaml``.  The output depends only on the page
and the options (no clock, no set order), so an import is reproducible byte for byte.
The page's disclaimer, privacy notice and publisher block are never written anywhere:
``compare_site`` reports how they differ from ``site.yaml``.
"""
from __future__ import annotations

import json
import os
import re
import textwrap
import unicodedata
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Iterable, Sequence

import yaml

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
    return _tidy(parts), tuple(notes)


def _tidy(parts: Iterable[str | Cite | Link]) -> Inline:
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


# -- the trailer: disclaimer, sign-up box, author, comment form, footer -------------

SIGNUP_RE = re.compile(r"^(get|sign up (for|to)|subscribe to) (our|the) .*newsletter\b", re.IGNORECASE)
REPLY_RE = re.compile(r"^leave a (reply|comment)\b", re.IGNORECASE)
COMMENT_FORM_RE = re.compile(r"(will not be published|required fields|^comment\b|^name\b|^email\b|^website\b|"
                             r"post comment|save my name|cancel reply)", re.IGNORECASE)
TERMS_RE = re.compile(r"terms (and|&) conditions|terms of (use|service)", re.IGNORECASE)
COMPANY_RE = re.compile(r"\b(ltd|limited|llp|plc)\.?$", re.IGNORECASE)
LABEL_RE = re.compile(r"^(e-?mail|vat number|vat no\.?|company number|company no\.?|phone number|phone|"
                      r"telephone|tel\.?)\s*:\s*(.*)$", re.IGNORECASE)
LABEL_FIELDS = {"email": "email", "e-mail": "email", "vat number": "vat_number", "vat no": "vat_number",
                "vat no.": "vat_number", "company number": "company_number", "company no": "company_number",
                "company no.": "company_number", "phone number": "phone", "phone": "phone",
                "telephone": "phone", "tel": "phone", "tel.": "phone"}
# the value of a label left empty on its own line may stand on the next line
VALUE_RES = {"email": re.compile(r"^\S+@\S+\.\S+$"), "phone": re.compile(r"^\+?[\d ()-]{7,}$"),
             "vat_number": re.compile(r"^(GB)?[\d ]{9,}$"), "company_number": re.compile(r"^[A-Z]{0,2}\d{6,8}$")}


@dataclass(frozen=True)
class _Line:
    """One block of the trailer; ``group`` is the blank-line-separated run (text) or
    the enclosing element (HTML) it belongs to."""
    text: str
    line: int
    group: int


def _read_trailer(lines: Sequence[_Line], path: Path, end_line: int) -> tuple[Author, SiteText, list[str]]:
    """Read what follows the reference list, in the library's page order: disclaimer,
    sign-up box, author block (name, credentials, bio), comment form, footer.  The
    author block has no marker of its own, so it is everything between the sign-up
    box and the comment form (or the first footer line: terms notice, a labelled
    publisher field or a company name); the bio is its third line onwards."""
    notes: list[str] = []
    i = 0

    def take_group() -> list[_Line]:
        nonlocal i
        group, taken = lines[i].group, []
        while i < len(lines) and lines[i].group == group and not (
                taken and (SIGNUP_RE.match(lines[i].text) or REPLY_RE.match(lines[i].text))):
            taken.append(lines[i])
            i += 1
        return taken

    # 1. the disclaimer stands right under the reference list
    disclaimer = None
    if i < len(lines) and not SIGNUP_RE.match(lines[i].text) and not REPLY_RE.match(lines[i].text):
        disclaimer = " ".join(l.text for l in take_group())
    # 2. the sign-up box: its heading and the group after it; only its privacy notice matters
    privacy = None
    if i < len(lines) and SIGNUP_RE.match(lines[i].text):
        box = take_group()[1:]
        if not box and i < len(lines):
            box = take_group()
        privacy = " ".join(l.text for l in box if "privacy" in l.text.lower()) or None
    # 3. the author block: name, credentials, bio, up to the comment form or the footer
    author_lines: list[_Line] = []
    while i < len(lines) and not REPLY_RE.match(lines[i].text) and not _footer_line(lines[i].text):
        author_lines.append(lines[i])
        i += 1
    where = author_lines[0].line if author_lines else (lines[i].line if i < len(lines) else end_line)
    if len(author_lines) < 3:
        raise ImportError_("no author block: expected the author's name, credentials and bio on separate "
                           "lines after the sign-up box", path=path, line=where)
    name = author_lines[0].text
    if len(name.split()) > 6 or name.endswith(".") or any(c.isdigit() for c in name):
        raise ImportError_(f"the author block does not start with a name: {name[:60]!r}", path=path, line=where)
    author = Author(id=slugify(name), name=name, credentials=author_lines[1].text,
                    bio=" ".join(l.text for l in author_lines[2:]))
    # 4. the comment form
    if i < len(lines) and REPLY_RE.match(lines[i].text):
        i += 1
        while i < len(lines) and COMMENT_FORM_RE.search(lines[i].text):
            i += 1
    # 5. the footer: terms notice, site description (dropped), publisher block
    terms = None
    publisher: list[tuple[str, str | tuple[str, ...]]] = []
    address: list[str] = []
    in_publisher = False
    collecting_address = False
    while i < len(lines):
        text = lines[i].text
        label = LABEL_RE.match(text)
        if label:
            in_publisher, collecting_address = True, False
            setting = LABEL_FIELDS[label.group(1).lower()]
            value = label.group(2).strip()
            if not value and i + 1 < len(lines) and VALUE_RES[setting].match(lines[i + 1].text):
                value = lines[i + 1].text
                i += 1
            if value:
                publisher.append((setting, value))
        elif COMPANY_RE.search(text) and not any(f == "company_name" for f, _ in publisher):
            in_publisher = collecting_address = True
            publisher.append(("company_name", text))
        elif collecting_address:
            address.append(text)
        elif not in_publisher and TERMS_RE.search(text):
            terms = f"{terms} {text}" if terms else text
        elif in_publisher:
            notes.append(f"{path}:{lines[i].line}: dropped unrecognised footer line {text[:60]!r}")
        # else: the site's description, page chrome
        i += 1
    if address:
        publisher.append(("registered_office", tuple(address)))
    return author, SiteText(disclaimer, privacy, terms, tuple(publisher)), notes


def _footer_line(text: str) -> bool:
    return bool(TERMS_RE.search(text) or LABEL_RE.match(text) or COMPANY_RE.search(text))


# -- the text reader --------------------------------------------------------------

BULLET_RE = re.compile(r"^\s*[\u2022\u25cf\u25aa\u25e6]\s*(.*)$")
NUMBERED_RE = re.compile(r"^\s*(\d+)[.)]\s+(.*)$")
REFERENCES_RE = re.compile(r"^(references|sources|bibliography):?$", re.IGNORECASE)
CONTINUATION_RE = re.compile(r"^\s*(available from|\[cited|https?://|doi:)", re.IGNORECASE)
# headings that always open a top-level section, even right after subsections
TOP_LEVEL_HEADINGS = {"summary", "conclusion", "conclusions", "overview", "introduction", "outlook",
                      "takeaway", "faqs", "faq", "references", "sources", "resources"}


def _heading_like(text: str, reference_count: int) -> bool:
    """A text line that can be a heading: short, starting with a capital, not ending
    like a sentence (. : ; ,) and not ending with a citation."""
    words = text.split()
    if not 1 <= len(words) <= 12 or len(text) > 90 or text[-1] in ".:;,":
        return False
    if not (text[0].isupper() or text[0].isdigit()):
        return False
    parts, _ = find_citations(text, reference_count)
    return not any(isinstance(p, Cite) for p in parts)


def read_text(path: Path, text: str) -> Page:
    """Read the page-text layout.

    Heading levels (the text has none): a heading line stands alone between blank
    lines.  It is ``##`` unless it follows another heading directly: that heading
    opens subsections, and it is ``###``.  After such a heading, a later one-word
    heading ("Risks", "Costs") is also ``###``, except the words in
    ``TOP_LEVEL_HEADINGS`` ("Summary"), which start a new ``##`` section.  Anything
    longer is ``##`` and closes the subsections.
    """
    lines = text.split("\n")
    title_index = next((i for i, l in enumerate(lines) if l.strip()), None)
    if title_index is None:
        raise ImportError_("no title: the file is empty", path=path, line=1)
    title = " ".join(lines[title_index].split())
    if len(title.split()) > 20 or title[-1] in ".:;,":
        raise ImportError_(f"no title: the first line reads like prose, not a title: {title[:60]!r}",
                           path=path, line=title_index + 1)
    ref_index = next((i for i in range(title_index + 1, len(lines)) if REFERENCES_RE.match(lines[i].strip())), None)
    if ref_index is None:
        raise ImportError_("no References section (a 'References' line followed by a numbered list)",
                           path=path, line=len(text.rstrip("\n").split("\n")))
    references, trailer_start = _text_references(lines, ref_index, path)
    count = len(references)
    blocks, notes = _text_body(lines, title_index + 1, ref_index, count, path)

    trailer: list[_Line] = []
    group = 0
    for i in range(trailer_start, len(lines)):
        if not lines[i].strip():
            group += 1
            continue
        trailer.append(_Line(" ".join(lines[i].split()), i + 1, group))
    author, site, trailer_notes = _read_trailer(trailer, path, len(text.rstrip("\n").split("\n")))
    return Page(path, title, tuple(blocks), tuple(references), author, site, tuple(notes + trailer_notes))


def _text_references(lines: list[str], ref_index: int, path: Path) -> tuple[list[Reference], int]:
    entries: list[tuple[int, str, int]] = []  # (number, text, line)
    i = ref_index + 1
    while i < len(lines):
        line = lines[i]
        match = NUMBERED_RE.match(line)
        if match:
            number = int(match.group(1))
            if number != len(entries) + 1:
                raise ImportError_(f"reference numbered {number}, expected {len(entries) + 1}", path=path, line=i + 1)
            entries.append((number, match.group(2), i + 1))
        elif entries and CONTINUATION_RE.match(line):
            number, raw, at = entries[-1]
            entries[-1] = (number, f"{raw} {line}", at)
        elif line.strip() and entries:
            break
        elif line.strip():
            raise ImportError_(f"cannot read this reference line: expected '1. ...', got {line.strip()[:60]!r}",
                               path=path, line=i + 1)
        i += 1
    if not entries:
        raise ImportError_("the References section has no numbered entries", path=path, line=ref_index + 1)
    return [parse_reference(n, raw, path, at) for n, raw, at in entries], i


def _text_body(lines: list[str], start: int, stop: int, count: int, path: Path) -> tuple[list[Block], list[str]]:
    # first pass: runs of lines (a paragraph or a heading) and bullet lists, each
    # piece with its line number
    raw: list[tuple[str, list[tuple[str, int]]]] = []  # ("run" | "list", [(text, line)])
    for i in range(start, stop):
        line = lines[i]
        if not line.strip():
            continue
        joined_to_previous = i > start and bool(lines[i - 1].strip())
        bullet = BULLET_RE.match(line)
        if bullet:
            if raw and raw[-1][0] == "list":
                raw[-1][1].append((bullet.group(1), i + 1))
            else:
                raw.append(("list", [(bullet.group(1), i + 1)]))
        elif raw and raw[-1][0] == "list" and line[:1].isspace() and joined_to_previous:
            text, at = raw[-1][1][-1]  # an indented continuation of the bullet above
            raw[-1][1][-1] = (f"{text} {line}", at)
        elif raw and raw[-1][0] == "run" and joined_to_previous:
            raw[-1][1].append((line, i + 1))  # a hard-wrapped paragraph
        else:
            raw.append(("run", [(line, i + 1)]))

    blocks: list[Block] = []
    notes: list[str] = []
    in_subsections = False

    def inline(text: str, at: int) -> Inline:
        parts, found = find_citations(text, count)
        notes.extend(f"{path}:{at}: {note}" for note in found)
        return parts

    for kind, pieces in raw:
        at = pieces[0][1]
        if kind == "list":
            blocks.append(BulletList(tuple(inline(t, n) for t, n in pieces), at))
            continue
        text = " ".join(" ".join(t for t, _ in pieces).split())
        if len(pieces) == 1 and _heading_like(text, count):
            if blocks and isinstance(blocks[-1], Heading):
                level, in_subsections = 3, True
            elif in_subsections and len(text.split()) == 1 and text.lower().strip("?!") not in TOP_LEVEL_HEADINGS:
                level = 3
            else:
                level, in_subsections = 2, False
            blocks.append(Heading(level, (text,), at))
        else:
            blocks.append(Paragraph(inline(text, at), at))
    return blocks, notes


# -- the HTML reader --------------------------------------------------------------

DROP_TAGS = {"script", "style", "noscript", "template", "form", "nav", "button", "input", "select", "textarea",
             "label", "iframe", "svg", "canvas", "object", "embed", "head", "img", "picture", "video", "audio"}
HEADING_TAGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
TEXT_TAGS = {"p", "li", "dt", "dd", "figcaption", "caption", "td", "th", "pre"} | HEADING_TAGS
CONTAINER_TAGS = {"html", "body", "main", "article", "section", "aside", "header", "footer", "div", "ul", "ol",
                  "dl", "address", "blockquote", "figure", "table", "thead", "tbody", "tr"}


@dataclass
class _HtmlBlock:
    kind: str  # "h1".."h6", "p", "ul", "ol" (a list item)
    parts: list  # inline parts: str, Cite, Link
    line: int
    group: int
    href: str | None = None  # last absolute link in the block (reference lists)


def read_html(path: Path, text: str) -> Page:
    """Read an HTML page: the first ``h1`` is the title; ``h2`` are sections, ``h3``
    and deeper subsections; ``ul``/``li`` bullet lists; a ``<sup>`` holding numbers of
    existing references is a citation; the ``ol`` after a "References" heading is the
    reference list.  Forms, scripts, navigation and anything before the ``h1`` are
    dropped.  A ``<br>`` splits a block into lines."""
    import lxml.html

    text = re.sub(r"^\s*<\?xml[^>]*\?>", "", text)  # lxml refuses str input with an encoding declaration
    parser = lxml.html.HTMLParser(remove_comments=True, remove_pis=True, no_network=True)
    try:
        root = lxml.html.document_fromstring(text, parser=parser)
    except Exception as exc:  # lxml raises ParserError or ValueError on empty or broken documents
        raise ImportError_(f"cannot parse the HTML page: {exc}", path=path, line=1) from None
    blocks: list[_HtmlBlock] = []
    _walk(root, 0, blocks, [0])

    title_at = next((i for i, b in enumerate(blocks) if b.kind == "h1"), None)
    if title_at is None:
        raise ImportError_("no title: the page has no <h1>", path=path, line=1)
    title = plain(_tidy(blocks[title_at].parts))
    if not title:
        raise ImportError_("no title: the <h1> is empty", path=path, line=blocks[title_at].line)
    ref_at = next((i for i in range(title_at + 1, len(blocks)) if blocks[i].kind in HEADING_TAGS
                   and REFERENCES_RE.match(plain(_tidy(blocks[i].parts)))), None)
    if ref_at is None:
        raise ImportError_("no References section (a 'References' heading followed by an <ol>)",
                           path=path, line=text.count("\n") + 1)
    references: list[Reference] = []
    i = ref_at + 1
    while i < len(blocks) and blocks[i].kind == "ol":
        raw = "".join(p if isinstance(p, str) else p.text for p in blocks[i].parts)
        references.append(parse_reference(len(references) + 1, raw, path, blocks[i].line, blocks[i].href))
        i += 1
    if not references:
        raise ImportError_("the References section has no <ol> list items", path=path, line=blocks[ref_at].line)
    count = len(references)

    notes: list[str] = []
    body: list[Block] = []
    list_group = None  # the <ul> the last bullet came from: its next <li> joins the same list
    for block in blocks[title_at + 1:ref_at]:
        parts = _tidy(_resolve_cites(block.parts, count, notes, path, block.line))
        if not parts:
            continue
        if block.kind in HEADING_TAGS:
            body.append(Heading(2 if block.kind in ("h1", "h2") else 3, parts, block.line))
        elif block.kind in ("ul", "ol"):
            if block.kind == "ol":
                notes.append(f"{path}:{block.line}: a numbered list in the body becomes a bullet list")
            if body and isinstance(body[-1], BulletList) and list_group == block.group:
                body[-1] = BulletList(body[-1].items + (parts,), body[-1].line)
            else:
                body.append(BulletList((parts,), block.line))
            list_group = block.group
            continue
        else:
            body.append(Paragraph(parts, block.line))
        list_group = None

    trailer = [_Line(plain(_tidy(b.parts)), b.line, b.group) for b in blocks[i:]]
    trailer = [t for t in trailer if t.text]
    author, site, trailer_notes = _read_trailer(trailer, path, text.count("\n") + 1)
    return Page(path, title, tuple(body), tuple(references), author, site, tuple(notes + trailer_notes))


@dataclass(frozen=True)
class _Sup:
    """A ``<sup>`` holding numbers: a citation once the reference count is known."""
    text: str


def _resolve_cites(parts: list, count: int, notes: list[str], path: Path, line: int) -> list:
    out = []
    for part in parts:
        if isinstance(part, _Sup):
            numbers = parse_numbers(part.text.strip("[]() "), count)
            if numbers is None:
                notes.append(f"{path}:{line}: <sup>{part.text}</sup> is not a citation of an existing "
                             f"reference (there are {count}); kept as text")
                out.append(part.text)
            else:
                out.append(Cite(numbers))
        else:
            out.append(part)
    return out


GROUP_TAGS = {"article", "section", "aside", "footer", "header", "main", "body", "div", "address", "blockquote",
              "figure", "ul", "ol"}


def _walk(el, group: int, out: list[_HtmlBlock], counter: list[int]) -> None:
    """Emit the text blocks under ``el`` in document order.  ``group`` numbers the
    enclosing grouping element (counted, not ``id()``: lxml's proxies are transient)."""
    tag = el.tag.lower() if isinstance(el.tag, str) else ""
    if tag in DROP_TAGS or not tag:
        return
    if tag in TEXT_TAGS:
        kind = tag
        if tag == "li":
            parent = el.getparent()
            kind = "ol" if parent is not None and parent.tag == "ol" else "ul"
        for parts in _inline_lines(el):
            out.append(_HtmlBlock(kind, parts, el.sourceline or 1, group, _last_href(el)))
        return
    if tag in GROUP_TAGS:
        counter[0] += 1
        group = counter[0]
    if not any(isinstance(c.tag, str) and c.tag.lower() in TEXT_TAGS | CONTAINER_TAGS for c in el.iter()
               if c is not el):
        for parts in _inline_lines(el):  # a leaf container: <div>Email:</div>
            out.append(_HtmlBlock("p", parts, el.sourceline or 1, group))
        return
    if el.text and el.text.strip():
        out.append(_HtmlBlock("p", [el.text], el.sourceline or 1, group))
    for child in el:
        _walk(child, group, out, counter)
        if child.tail and child.tail.strip():
            out.append(_HtmlBlock("p", [child.tail], el.sourceline or 1, group))


def _inline_lines(el) -> list[list]:
    """The element's inline content as lines (split at ``<br>``) of parts."""
    lines: list[list] = [[]]

    def visit(node) -> None:
        if node.text:
            lines[-1].append(node.text)
        for child in node:
            tag = child.tag.lower() if isinstance(child.tag, str) else ""
            if tag == "br":
                lines.append([])
            elif tag == "sup" and re.fullmatch(r"\s*\[?[\d,\u2013\- ]+\]?\s*", child.text_content() or ""):
                lines[-1].append(_Sup(" ".join(child.text_content().split()).replace(" ", "")))
            elif tag == "a" and _is_http_url(child.get("href") or "") and child.text_content().strip():
                lines[-1].append(Link(" ".join(child.text_content().split()), child.get("href")))
            elif tag and tag not in DROP_TAGS:
                visit(child)
            if child.tail:
                lines[-1].append(child.tail)

    visit(el)
    return [parts for parts in lines if any(isinstance(p, (_Sup, Link)) or str(p).strip() for p in parts)]


def _last_href(el) -> str | None:
    hrefs = [a.get("href") for a in el.iter("a") if _is_http_url(a.get("href") or "")]
    return hrefs[-1] if hrefs else None


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


# -- the writer ---------------------------------------------------------------------

# Leading words dropped from slugs, so "What Is Microneedling?" gives "microneedling":
# short, stable URLs that do not change when an editor rewords a question title.
SLUG_STOPWORDS = {"a", "an", "the", "what", "is", "are", "how", "why", "when", "who", "which", "does", "do",
                  "can", "should", "to", "of", "and", "or", "for", "in", "on", "your", "you", "about", "with"}
WIDTH = 88  # front matter lines are folded to this width


def slugify(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


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
