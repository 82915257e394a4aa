"""The pipeline's error types.

Each carries where (file and line, or the thing concerned) and why.  The CLI
prints any ``NewsletterError`` as one line and exits non-zero; anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations

from pathlib import Path


class NewsletterError(Exception):
    """Base class: an expected failure with a message fit for an editor."""

    def __init__(self, message: str, *, path: Path | str | None = None, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.path = Path(path) if path is not None else None
        self.line = line

    @property
    def where(self) -> str:
        if self.path is None:
            return ""
        return f"{self.path}:{self.line}" if self.line else str(self.path)

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class ContentError(NewsletterError):
    """An article, author or the site settings are malformed."""


class ImportError_(NewsletterError):
    """A library page could not be converted into an article."""


class RenderError(NewsletterError):
    """An issue could not be rendered into a valid email or page."""


class DeliveryError(NewsletterError):
    """A send could not proceed (transport, ledger or message problem)."""


class LeaseLost(DeliveryError):
    """Another process took the send over (this one stalled past its lease): stop, writing nothing."""


class CorrectionError(NewsletterError):
    """A correction or retraction cannot be recorded or sent as asked."""


class SubscriberError(NewsletterError):
    """Bad subscriber input: an invalid address, a bad CSV row, a bad token."""


class ScheduleError(NewsletterError):
    """The calendar or the daemon cannot do what was asked."""


class DatabaseError(NewsletterError):
    """The database cannot be reached or opened (a server down, a refused login, an unreadable file)."""


class SchemaError(NewsletterError):
    """The database's schema cannot be used by this code (e.g. it was migrated by a newer release)."""


class BounceError(NewsletterError):
    """A bounce or complaint could not be fetched, found or undone (``pipeline.bounces``)."""


class StaffError(NewsletterError):
    """A staff account, sign-in or permission problem (the console and staff commands)."""


class ReviewError(ScheduleError):
    """A send refused because an article has no current medical approval; ``slugs``
    names them.  The day stays retryable: approve, and the next try sends."""

    def __init__(self, message: str, slugs: tuple[str, ...] = ()):
        super().__init__(message)
        self.slugs = tuple(slugs)
