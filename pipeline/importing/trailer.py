"""The trailer both page layouts carry after the reference list: the disclaimer, the sign-up box
(dropped; its privacy notice kept for comparison), the author block, the comment form (dropped)
and the footer (terms notice, site description, publisher block), read by one function."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipeline.content.article import Author
from pipeline.errors import ImportError_
from pipeline.importing.page import SiteText, slugify


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
class Line:
    """One block of the trailer; ``group`` is the blank-line-separated run (text) or
    the enclosing element (HTML) it belongs to."""
    text: str
    line: int
    group: int


def read_trailer(lines: Sequence[Line], path: Path, end_line: int) -> tuple[Author, SiteText, list[str]]:
    """Read what follows the reference list, in the library's page order: disclaimer,
    sign-up box, author block (name, credentials, bio), comment form, footer.  The
    author block has no marker of its own, so it is everything between the sign-up
    box and the comment form (or the first footer line: terms notice, a labelled
    publisher field or a company name); the bio is its third line onwards."""
    notes: list[str] = []
    i = 0

    def take_group() -> list[Line]:
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
    author_lines: list[Line] = []
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
