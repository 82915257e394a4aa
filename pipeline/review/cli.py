"""``newsletter review approve|reject|list``: medical sign-off from the CLI.

The reviewer says who they are (``--as EMAIL``, with the password from
``NEWSLETTER_STAFF_PASSWORD`` or a prompt), exactly as the console's sign-in
checks it; the decision is about the article's current version."""
from __future__ import annotations

import click


def _decide(obj, slug: str, as_email: str | None, decision: str, comment: str | None) -> None:
    from pipeline.database import open_database
    from pipeline.review import reviews
    from pipeline.staff.cli import staff_identity

    library = obj.library()
    article = library.article(slug)  # an unknown slug is one line naming it
    what = "approve articles" if decision == reviews.APPROVED else "send articles back"
    staff = staff_identity(obj, as_email, "reviewer", what)
    review = reviews.decide(open_database(library.settings.database_url), staff, article, decision, comment)
    verb = "approved" if decision == reviews.APPROVED else "sent back"
    click.echo(f"{slug}: version {review.version[:12]} {verb} by {review.reviewer}")


@click.group("review")
def review_group() -> None:
    """Medical sign-off of articles (reviewers)."""


@review_group.command("approve")
@click.argument("slug")
@click.option("--as", "as_email", default=None, help="Your staff address (the reviewer role).")
@click.option("--comment", default=None, help="An optional note kept with the approval.")
@click.pass_obj
def approve(obj, slug: str, as_email: str | None, comment: str | None) -> None:
    """Approve the article's current version; any later edit makes the approval stale."""
    from pipeline.review.reviews import APPROVED
    _decide(obj, slug, as_email, APPROVED, comment)


@review_group.command("reject")
@click.argument("slug")
@click.option("--as", "as_email", default=None, help="Your staff address (the reviewer role).")
@click.option("--comment", required=True, help="What needs changing.")
@click.pass_obj
def reject(obj, slug: str, as_email: str | None, comment: str) -> None:
    """Send the article's current version back to the editors with a comment."""
    from pipeline.review.reviews import REJECTED
    _decide(obj, slug, as_email, REJECTED, comment)


@review_group.command("list")
@click.pass_obj
def list_cmd(obj) -> None:
    """Each article's review status (of its current version)."""
    from pipeline.database import open_database
    from pipeline.review.reviews import statuses
    from pipeline.scheduling.slots import zone

    library = obj.library()
    found = statuses(open_database(library.settings.database_url), library.articles)
    tz = zone(library.settings)
    for article in library.articles:
        click.echo(f"{article.slug}\t{found[article.slug].describe(tz)}")
