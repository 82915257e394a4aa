#!/usr/bin/env bash
# `make demo`: the main job end to end on the embedded defaults: SQLite in var/,
# mail to the Maildir outbox var/outbox (nothing leaves the machine), the
# archive and feeds in public/.
#
# With nothing on the calendar for today, the demo sends the next unsent article
# of the queue (NEWSLETTER_SEND_WHEN_NOTHING_DUE=true for this run only; the
# site default stays "send only what is scheduled").  Running it again the same
# day sends nothing twice: it reports the day as already sent.
#
# NEWSLETTER_BIN overrides the command (tests run this script on a copy of the repo).
set -euo pipefail
cd "$(dirname "$0")/.."
NL=${NEWSLETTER_BIN:-.venv/bin/newsletter}
export NEWSLETTER_SEND_WHEN_NOTHING_DUE=${NEWSLETTER_SEND_WHEN_NOTHING_DUE:-true}
# The demo has no clinician to sign articles off (`newsletter review approve`), so it
# sends without medical sign-off for this run only; the site default stays "required".
export NEWSLETTER_REVIEW_REQUIRED=${NEWSLETTER_REVIEW_REQUIRED:-false}
DEMO=demo@example.com

echo "== checking the library"
$NL check

if [ -f ../shared/seeds/microneedling-guide.txt ]; then
  echo "== importing the seed page into a scratch folder (var/demo-import)"
  $NL import ../shared/seeds/microneedling-guide.txt --out var/demo-import >/dev/null || true
fi

echo "== the demo subscriber"
if $NL subscribers show "$DEMO" >/dev/null 2>&1; then
  echo "$DEMO is already subscribed"
else
  $NL subscribers add "$DEMO" --name Demo --confirmed \
    --consent "Demo subscriber added by make demo (consented by the operator running it)."
fi

echo "== today's issue: check, compose, publish the archive and feeds, send"
$NL run --once
