"""The README's settings table, generated from ``pipeline.settings.SETTINGS``.

``python -m pipeline.settings_doc`` rewrites the table between the start marker
``<!-- settings-table ... -->`` and the end marker ``<!-- /settings-table -->``;
``--check`` only reports whether it is current (exit 1 when stale).  A test runs the
check, so a setting added to the table without regenerating the README fails CI.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Iterable

from pipeline.errors import NewsletterError
from pipeline.settings import REQUIRED, SETTINGS, Setting

README = Path(__file__).resolve().parent.parent / "README.md"
START_RE = re.compile(r"^<!-- settings-table\b.*-->[ \t]*$", re.MULTILINE)
END_MARKER = "<!-- /settings-table -->"


def _cell(text: str) -> str:
    """Table-cell text: one line, with "|" and "<" escaped (GitHub would read
    "<sender domain>" as an HTML tag and hide it)."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "\\<")


def _default(setting: Setting) -> str:
    if setting.default is REQUIRED:
        return "(required)"
    if setting.secret and not setting.default:
        return "(secret, environment only)"
    value = repr(setting.default)
    return f"`{value}`" if "`" not in value else value


def render_table(settings: Iterable[Setting] = SETTINGS) -> str:
    """The Markdown table: one row per setting, in declaration order."""
    rows = ["| setting | default | environment | description |", "| --- | --- | --- | --- |"]
    for s in settings:
        env = ", ".join(f"`{name}`" for name in s.env_names)
        rows.append(f"| `{s.name}` | {_cell(_default(s))} | {env} | {_cell(s.help)} |")
    return "\n".join(rows) + "\n"


def _span(text: str) -> tuple[int, int]:
    """(start, end) offsets of the generated part, just after the start marker's line
    and up to the end marker (or, when there is no end marker yet, the end of the
    marker line: the table and the end marker are inserted there)."""
    start = START_RE.search(text)
    if start is None:
        raise NewsletterError("README.md has no '<!-- settings-table ... -->' marker to put the settings table after")
    begin = start.end() + 1 if text[start.end():start.end() + 1] == "\n" else start.end()
    end = text.find(END_MARKER, begin)
    return begin, (begin if end < 0 else end)


def with_table(text: str, table: str) -> str:
    begin, end = _span(text)
    if not text.startswith(END_MARKER, end):
        if begin == len(text) and not text.endswith("\n"):
            text, begin, end = text + "\n", begin + 1, end + 1
        return text[:begin] + "\n" + table + "\n" + END_MARKER + "\n" + text[end:]
    return text[:begin] + "\n" + table + "\n" + text[end:]


def current_table(text: str) -> str:
    begin, end = _span(text)
    return text[begin:end].strip("\n") + "\n" if text.startswith(END_MARKER, end) else ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    paths = [a for a in argv if not a.startswith("--")]
    path = Path(paths[0]) if paths else README
    text = path.read_text(encoding="utf-8")
    updated = with_table(text, render_table())
    if check:
        if updated != text:
            print(f"{path}: the settings table is stale; run `python -m pipeline.settings_doc`", file=sys.stderr)
            return 1
        return 0
    if updated != text:
        path.write_text(updated, encoding="utf-8")
        print(f"{path}: settings table updated ({len(SETTINGS)} settings)")
    else:
        print(f"{path}: settings table is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
