"""Sending a notice: the ledger and the transport issues use, exactly once per person.

``send_notice`` records the notice as an issue of its own (kind ``correction``, key
``<day>-correction-n<id>``), writes its recipients (``audience.write_audience``) and
hands it to ``pipeline.delivery.deliver.send_issue``, unchanged: the same lease,
batches, fencing, stop requests, ``uncertain_policy`` and summary.  So a second run
sends nobody anything, ``--resume`` finishes an interrupted one, and a SIGKILL can
duplicate at most the rows in flight (one per connection: ``smtp_connections``),
marked uncertain, as for issues.
"""
from __future__ import annotations

from sqlalchemy import Engine

from pipeline.corrections import audience, records
from pipeline.corrections.notice_mail import render_notice
from pipeline.delivery import ledger
from pipeline.errors import CorrectionError, NewsletterError, RenderError
from pipeline.rendering.issue import RenderedIssue


def notice_for(engine: Engine, library, correction_id: int) -> tuple[records.Correction, RenderedIssue]:
    """The correction and its rendered notice; one-line errors for a minor correction or a
    missing article file."""
    correction = records.find(engine, correction_id)
    if not correction.notifies:
        raise CorrectionError(f"correction {correction.id} of {correction.slug} is minor (recorded without "
                              "--significant): it shows on the site and in the feeds, and is not mailed")
    try:
        article = library.article(correction.slug)
    except NewsletterError:
        raise CorrectionError(f"{correction.slug} is no longer in the library: keep a corrected or retracted "
                              "article's file (its page shows the notice), then send") from None
    try:
        return correction, render_notice(correction, article, library.settings)
    except NewsletterError:
        raise
    except Exception as exc:  # one line, never a traceback
        raise RenderError(f"cannot render the notice of correction {correction.id}: "
                          f"{type(exc).__name__}: {exc}") from None


def send_notice(engine: Engine, library, correction_id: int, *, resume: bool = False, dry_run: bool = False,
                progress: bool = False):
    """Send correction ``correction_id``'s notice to its audience; the ``SendSummary``."""
    from pipeline.delivery.deliver import send_issue
    from pipeline.delivery.send_summary import SendSummary

    correction, rendered = notice_for(engine, library, correction_id)
    settings = library.settings
    if dry_run:
        found = ledger.find_issue(engine, rendered.issue.key)
        if found is not None and found.state != "composed":
            counts = ledger.state_counts(engine, found.id)
            n = counts[ledger.QUEUED] + counts[ledger.DEFERRED]
        else:
            n = audience.count_audience(engine, correction.slug)
        return SendSummary(rendered.issue.key, recipients=n, dry_run=True)
    issue = ledger.record_issue(engine, rendered.issue, rendered.subject)
    audience.write_audience(engine, issue.id, correction.slug)
    if resume:
        release_stops(engine, rendered.issue.key)
    return send_issue(engine, settings, rendered, resume=resume, progress=progress)


def release_stops(engine: Engine, key: str) -> int:
    """Release the stops that ended an earlier run of this notice (a signal, a ``newsletter stop``
    it honoured): ``--resume`` is the operator's word that it goes on, as ``send --date D --resume``
    is for an issue.  Only this notice's: an open stop of the day's issue stays.  How many."""
    from sqlalchemy import update

    from pipeline import clock
    from pipeline.delivery import stops

    with engine.begin() as conn:
        return conn.execute(update(stops.T).where(stops.T.c.issue_key == key, stops.T.c.released_at.is_(None))
                            .values(released_at=clock.now())).rowcount
