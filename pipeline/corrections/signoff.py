"""What may not be sent: retracted articles, and significant corrections awaiting sign-off.

``pipeline.scheduling.plan.plan_day`` (the one decider of what a day sends) asks
``held(engine)`` and leaves every slug it names out of every issue: a retracted
article for good; an article whose newest significant correction has no medical
sign-off until a reviewer approves that version.

The approval is the medical review of ``pipeline.review``: a significant correction
holds its article from future sends (weekly digests, topic issues, the queue) until
a reviewer approves the corrected version (``newsletter review approve SLUG`` or the
console), whatever ``review_required`` says for ordinary articles.
"""
from __future__ import annotations

from datetime import timezone

from sqlalchemy import Engine, select

from pipeline.corrections.records import CORRECTIONS, RETRACTION, Correction
from pipeline.review.reviews import version_approved


def reviewer_approved(engine: Engine, correction: Correction) -> bool:
    """True when a reviewer approved the article version ``correction.after_hash`` of ``correction.slug``
    (or a later review decision on that version did not send it back)."""
    return version_approved(engine, correction.slug, correction.after_hash)


def needs_signoff(engine: Engine, correction: Correction) -> bool:
    """True for a significant correction whose corrected version no reviewer has approved."""
    return correction.kind != RETRACTION and correction.significant and not reviewer_approved(engine, correction)


def held(engine: Engine) -> dict[str, str]:
    """slug -> why it cannot be sent, for every article a send must leave out."""
    with engine.connect() as conn:
        rows = [Correction.of(r) for r in conn.execute(select(CORRECTIONS).order_by(CORRECTIONS.c.id))]
    reasons: dict[str, str] = {}
    newest: dict[str, Correction] = {}
    for row in rows:
        if row.kind == RETRACTION:
            # an instant, not a day: this has no time zone to name the site's day in
            at = row.created_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            reasons[row.slug] = f"{row.slug} was retracted at {at} (correction {row.id})"
        elif row.significant:
            newest[row.slug] = row
    for slug, row in newest.items():
        # the newest significant correction decides: its corrected version is the one to approve
        if slug not in reasons and needs_signoff(engine, row):
            reasons[slug] = (f"{slug} has a significant correction ({row.id}) awaiting medical sign-off of the "
                             "corrected version")
    return reasons
