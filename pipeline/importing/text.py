"""The page-text reader (``read_text``): the layout of ``shared/seeds/microneedling-guide.txt``, one
block per line, ``•`` bullets, citation numbers glued to the cited word ("types1,2"), a
"References" line and a numbered list."""
from __future__ import annotations

import re
from pathlib import Path

from pipeline.content.article import Reference
from pipeline.errors import ImportError_
from pipeline.importing.page import (Block, BulletList, Cite, Heading, Inline, Page, Paragraph, REFERENCES_RE,
                                     TOP_LEVEL_HEADINGS, find_citations, parse_reference)
from pipeline.importing.trailer import Line, read_trailer


# -- the text reader --------------------------------------------------------------

BULLET_RE = re.compile(r"^\s*[\u2022\u25cf\u25aa\u25e6]\s*(.*)$")
NUMBERED_RE = re.compile(r"^\s*(\d+)[.)]\s+(.*)$")
CONTINUATION_RE = re.compile(r"^\s*(available from|\[cited|https?://|doi:)", re.IGNORECASE)
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

    trailer: list[Line] = []
    group = 0
    for i in range(trailer_start, len(lines)):
        if not lines[i].strip():
            group += 1
            continue
        trailer.append(Line(" ".join(lines[i].split()), i + 1, group))
    author, site, trailer_notes = read_trailer(trailer, path, len(text.rstrip("\n").split("\n")))
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
