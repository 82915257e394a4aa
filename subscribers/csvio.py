"""Subscribers in and out of CSV files.

Import reads ``email,name,topics,frequency,consent,consent_version,consented_at,
time_zone,delivery_hour`` (only ``email`` is required; ``consent`` may come from
``--consent`` for the whole file instead).  ``time_zone`` and ``delivery_hour``
follow ``subscribers.delivery_time`` (an IANA place name, a whole hour 0..23);
empty keeps an existing subscriber's choice (a new one gets the editors').
Every row is checked before anything is written; good rows are imported and
each bad row is reported with its line number and why:

- a row that does not parse (an unbalanced quote, more cells than the header),
- bytes that are not UTF-8,
- an invalid address, or one already given on an earlier line,
- an unknown topic or frequency, a bad ``consented_at``, a time zone we do not
  offer or an hour outside 0..23,
- a cell that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``,
  tab, carriage return at the start): rejected, never stored.  The ``email``
  cell is exempt, since only a valid address is taken from it
  (``+x@example.com`` is one),
- no consent wording.

A record must fit on one line: each line is parsed on its own, so one stray
quote cannot swallow the rest of the file.  Suppressed addresses are skipped
(and listed) by ``store.import_rows``, never re-subscribed.

Export writes the same columns plus ``status`` and ``created_at`` (which an
import ignores), with formula-looking cells escaped by a leading ``'``.  Import
undoes exactly that escape (``'`` followed by a formula start), so a file that
export wrote imports cleanly into a fresh database: the round trip.
"""
from __future__ import annotations

import codecs
import csv
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator, TextIO

from pipeline.errors import SubscriberError
from subscribers import delivery_time, store

COLUMNS = ("email", "name", "topics", "frequency", "consent", "consent_version", "consented_at", "time_zone",
           "delivery_hour")
IGNORED = ("status", "created_at")  # written by export; an import does not take them from a file
EXPORT_COLUMNS = ("email", "name", "status", "frequency", "topics", "consent", "consent_version", "consented_at",
                  "created_at", "time_zone", "delivery_hour")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_TOPIC_SPLIT = re.compile(r"[;,|\s]+")


@dataclass(frozen=True)
class Problem:
    line: int
    reason: str


@dataclass(frozen=True)
class ParsedFile:
    rows: tuple[store.ImportRow, ...]
    rejected: tuple[Problem, ...]


@dataclass(frozen=True)
class ImportReport:
    path: Path
    added: int
    updated: int
    skipped: tuple[Problem, ...]  # suppressed addresses
    rejected: tuple[Problem, ...]

    def lines(self) -> Iterator[str]:
        problems = sorted([(p.line, "rejected", p.reason) for p in self.rejected]
                          + [(p.line, "skipped", p.reason) for p in self.skipped])
        for line, kind, reason in problems:
            yield f"{self.path}:{line}: {kind}: {reason}"
        yield (f"{self.path}: added {self.added}, updated {self.updated}, "
               f"skipped as suppressed {len(self.skipped)}, rejected {len(self.rejected)}")


def _show(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _header(cells: list[str], path: Path, line: int) -> list[str]:
    names = [c.strip().lower() for c in cells]
    unknown = [n for n in names if n not in COLUMNS and n not in IGNORED]
    if unknown:
        raise SubscriberError(f"unknown column {unknown[0]!r} (columns: {', '.join(COLUMNS)})", path=path, line=line)
    if "email" not in names:
        raise SubscriberError("the header has no 'email' column", path=path, line=line)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SubscriberError(f"column {repeated[0]!r} appears twice", path=path, line=line)
    return names


def _consented_at(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise SubscriberError(f"consented_at {_show(text)} is not an ISO 8601 date-time") from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise SubscriberError(f"consented_at {_show(text)} has no UTC offset (write e.g. 2026-01-31T09:00:00+00:00)")
    return value


def _row(settings, names: list[str], cells: list[str], line: int, default_consent: str | None) -> store.ImportRow:
    if len(cells) > len(names):
        raise SubscriberError(f"malformed row: {len(cells)} cells but the header has {len(names)} "
                              "(an unquoted comma?)")
    values: dict[str, str] = {}
    for name, cell in zip(names, cells):
        # Leading spaces are skipped by some spreadsheets before they look for "=".
        bare = cell.lstrip(" ")
        if bare.startswith("'") and bare[1:].lstrip(" ").startswith(FORMULA_START):
            values[name] = bare[1:]  # our export's escape: the text is what follows the quote
            continue
        if bare.startswith(FORMULA_START) and name != "email":
            raise SubscriberError(f"cell {name!r} starts with {cell.lstrip(' ')[:1]!r} and would run as a spreadsheet "
                                  f"formula: {_show(cell)}")
        values[name] = cell.strip()
    address, key = store.normalise_email(values.get("email", ""))
    topics_cell = values.get("topics", "")
    topics = store.clean_topics(settings, _TOPIC_SPLIT.split(topics_cell)) if topics_cell else None
    frequency = store.clean_frequency(values["frequency"]) if values.get("frequency") else None
    consent = values.get("consent") or (default_consent or "").strip()
    if not consent:
        raise SubscriberError("no consent wording (a 'consent' cell, or --consent for the whole file)")
    zone_cell = values.get("time_zone", "")
    # "": the editors' zone, written as NULL; None (an empty cell): keep what is held
    time_zone = (delivery_time.clean_zone(settings, zone_cell) or "") if zone_cell else None
    hour = delivery_time.clean_hour(values["delivery_hour"]) if values.get("delivery_hour") else None
    return store.ImportRow(line=line, email=address, email_key=key, name=store.clean_name(values.get("name") or None),
                           topics=topics, frequency=frequency, consent=consent,
                           consent_version=values.get("consent_version") or None,
                           consented_at=_consented_at(values["consented_at"]) if values.get("consented_at") else None,
                           time_zone=time_zone, delivery_hour=hour)


def parse(settings, data: bytes, path: Path | str = "<csv>", *, default_consent: str | None = None) -> ParsedFile:
    """Validate every line of a CSV file; header problems raise, row problems are collected."""
    path = Path(path)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    names: list[str] | None = None
    rows: list[store.ImportRow] = []
    rejected: list[Problem] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), 1):
        raw = raw.removesuffix(b"\r")
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problem = f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1} (save the file as UTF-8)"
            if names is None:
                raise SubscriberError(problem, path=path, line=number) from None
            rejected.append(Problem(number, problem))
            continue
        try:
            cells = next(csv.reader([text], strict=True))
        except csv.Error as exc:
            if names is None:
                raise SubscriberError(f"malformed header: {exc}", path=path, line=number) from None
            rejected.append(Problem(number, f"malformed row: {exc} (unbalanced quotes? a record must fit on one line)"))
            continue
        if names is None:
            names = _header(cells, path, number)
            continue
        try:
            row = _row(settings, names, cells, number, default_consent)
        except SubscriberError as exc:
            rejected.append(Problem(number, exc.message))
            continue
        if row.email_key in first_line:
            rejected.append(Problem(number, f"duplicate: {row.email} is already on line {first_line[row.email_key]}"))
            continue
        first_line[row.email_key] = number
        rows.append(row)
    if names is None:
        raise SubscriberError("the file is empty (expected a header line with an 'email' column)", path=path)
    return ParsedFile(tuple(rows), tuple(rejected))


def import_file(engine, settings, path: Path | str, *, default_consent: str | None = None) -> ImportReport:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SubscriberError(f"cannot read the file: {exc.strerror}", path=path) from None
    parsed = parse(settings, data, path, default_consent=default_consent)
    outcome = store.import_rows(engine, settings, parsed.rows)
    return ImportReport(path, outcome.added, outcome.updated,
                        tuple(Problem(line, reason) for line, reason in outcome.skipped), parsed.rejected)


def neutralise(cell: str) -> str:
    """A cell a spreadsheet would run as a formula gets a leading ``'`` (OWASP CSV injection)."""
    return "'" + cell if cell.lstrip(" ").startswith(FORMULA_START) else cell


def write_export(engine, out: TextIO, *, status: str | None = None, chunk: int = store.CHUNK) -> int:
    """Write every subscriber (of ``status``) as CSV; returns the number of rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    page: list[store.SubscriberInfo] = []

    def flush() -> None:
        consents = store.latest_consents(engine, [p.id for p in page])
        for p in page:
            consent = consents.get(p.id, {})
            cells = [p.email, p.name or "", p.status, p.frequency, ";".join(p.topics), consent.get("wording") or "",
                     consent.get("version") or "", consent["at"].isoformat() if consent.get("at") else "",
                     p.created_at.isoformat(), p.time_zone or "",
                     "" if p.delivery_hour is None else str(p.delivery_hour)]
            writer.writerow([neutralise(c) for c in cells])
        page.clear()

    for info in store.iter_subscribers(engine, status, chunk=chunk):
        page.append(info)
        count += 1
        if len(page) >= chunk:
            flush()
    flush()
    return count
