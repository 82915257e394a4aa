"""Publishing a correction or retraction: what ``newsletter correct|retract`` and the
console's Correct and Retract both run.  The record and its audit row are written in one
transaction (``pipeline.corrections.records.record``), then the site is rebuilt so the
article page, the feeds and every issue page that carried the article show it at once."""
from __future__ import annotations

from datetime import date

from pipeline.corrections import records


def rebuild(library, engine, today: date) -> int:
    """Rebuild the site with the corrections' notices; the number of files changed."""
    from pipeline.corrections.notices import site_update
    from pipeline.site.pages import build_site

    report = build_site(library, library.settings.public_dir, notices=site_update(library, today, engine=engine))
    return len(report.written)


def publish(engine, library, slug: str, note: str, *, kind: str, significant: bool, by: str, actor: str,
            today: date, build: bool = True, via: str = "cli",
            ip: str | None = None) -> tuple[records.Correction, int | None]:
    """Record it (refusals are one-line ``CorrectionError``s), then rebuild the site unless
    ``build`` is off.  (the correction, files changed or None)."""
    correction = records.record(engine, library, slug, note, kind=kind, significant=significant, by=by,
                                today=today, actor=actor, via=via, ip=ip)
    return correction, (rebuild(library, engine, today) if build else None)
