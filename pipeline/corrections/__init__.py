"""Corrections and retractions: an article's recorded changes, and where they show.

- ``records``: the ``corrections`` table (who, when, the note, the content hashes
  before and after) and ``article_versions`` (the hash of each version that went
  out: on the site first, in an issue, or with a correction), with the rules a
  new correction or retraction must pass.
- ``signoff``: what may not be sent (a retracted article; one whose significant
  correction awaits medical sign-off), for ``pipeline.scheduling.plan.plan_day``.
- ``notices``: the frozen values the site shows (article box and history,
  retraction page, feed item note, the issue page's notice).
- ``notice_mail`` and ``audience``: the short notice email, and its recipients
  (everyone the ledger shows received an issue carrying the article, less those
  who left since); ``send`` hands both to the delivery stage's ``send_issue``.
- ``cli``: ``newsletter correct``, ``retract``, ``corrections``, and the
  ``--correction`` forms of ``preview``, ``send`` and ``send-test``.
"""
