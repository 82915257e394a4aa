"""The version of an article file: the SHA-256 of its bytes as written, with a UTF-8
BOM dropped and line ends made LF.  It is what a medical review signs off and what a
correction records (``pipeline.review.reviews.article_version``), and the one place
that decides it.

Each process remembers the version of every file it has read, by (path, inode, size,
mtime in ns).  The library notes a file's version as it reads it, with the stat taken
before the read (a file written after that stat has a new stamp, so it is read again),
so a build with a database does not read and hash every article twice more.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

BOM = b"\xef\xbb\xbf"

_known: dict[str, tuple[tuple[int, int, int], str]] = {}


def of_bytes(data: bytes, raw_sha: str | None = None) -> str:
    """The version of a file holding ``data``; ``raw_sha``, the SHA-256 of ``data`` as it
    is, is used when normalising changes nothing (no BOM, no CR), to hash only once."""
    if raw_sha is not None and not data.startswith(BOM) and b"\r" not in data:
        return raw_sha
    return hashlib.sha256(data.removeprefix(BOM).replace(b"\r\n", b"\n").replace(b"\r", b"\n")).hexdigest()


def stamp(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_size, st.st_mtime_ns


def note(path: Path | str, file_stamp: tuple[int, int, int], data: bytes, raw_sha: str | None = None) -> str:
    """Remember the version of ``path`` as read (``file_stamp`` taken before the read)."""
    version = of_bytes(data, raw_sha)
    _known[str(path)] = (file_stamp, version)
    return version


def of_file(path: Path | str) -> str | None:
    """The version of the file at ``path`` now, or None when it cannot be read."""
    try:
        now = stamp(os.stat(path))
    except OSError:
        return None
    hit = _known.get(str(path))
    if hit is not None and hit[0] == now:
        return hit[1]
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return note(path, now, data)
