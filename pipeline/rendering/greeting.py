"""The greeting line of an issue: "Hello Jane," for a subscriber named ``Jane "JD" Doe``.

The name first passes the header rule (``pipeline.mail.headers.display_name``): a name
that could hide text or inject a line is never used, and the greeting is "Hello,".
Then the first name is the first word that is not a title (Dr, Ms, Prof...) or a
quoted nickname ("JD", 'JD', “JD”, (JD)).  A title with only a surname after it
keeps the title ("Hello Dr Okafor,"); a name with no such word gives "Hello,".
Names in scripts written without spaces (山田太郎) stay whole: there is no first
word to take.
"""
from __future__ import annotations

import unicodedata

from pipeline.mail.headers import display_name

TITLES = frozenset({
    "mr", "mrs", "ms", "miss", "mx", "dr", "doctor", "prof", "professor", "sir", "dame", "lord", "lady",
    "rev", "revd", "reverend", "fr", "father", "sr", "sister", "capt", "captain", "hon",
})
_OPENING_QUOTES = "\"'“‘«‹„‚(["
_TRAILING = ",;:."


def _is_title(word: str) -> bool:
    return word.rstrip(".").lower() in TITLES


def _words(name: str) -> list[str]:
    """The name's words with quoted nicknames (one word or several) taken out."""
    words, quoted = [], False
    for word in name.split():
        if quoted:
            quoted = not (word[-1:] in "\"'”’»›)]" or word.rstrip(_TRAILING)[-1:] in "\"'”’»›)]")
            continue
        if word[0] in _OPENING_QUOTES:
            closing = word.rstrip(_TRAILING)
            quoted = len(closing) == 1 or closing[-1] not in "\"'”’»›)]"
            continue
        words.append(word)
    return words


def first_name(name: str | None) -> str:
    """The name to greet someone by; "" when there is none to use."""
    name = display_name(name)
    if not name:
        return ""
    words = _words(name)
    titles = [w for w in words if _is_title(w)]
    rest = [w for w in words if not _is_title(w)]
    if not rest:
        return ""
    if titles and len(rest) == 1 and words.index(titles[0]) < words.index(rest[0]):
        return f"{titles[0]} {rest[0].rstrip(_TRAILING)}"  # "Dr Okafor": a title and a surname
    first = rest[0].rstrip(_TRAILING)
    # a "name" of punctuation only ("-", "?") is no name; letters, digits and emoji are
    return first if any(not unicodedata.category(c).startswith("P") for c in first) else ""


def greeting(name: str | None) -> str:
    first = first_name(name)
    return f"Hello {first}," if first else "Hello,"
