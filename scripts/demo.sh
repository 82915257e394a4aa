#!/usr/bin/env bash
# The main job end to end on the embedded defaults (SQLite in var/, the outbox
# folder var/outbox, static output in public/).  Later stages extend this.
set -euo pipefail
cd "$(dirname "$0")/.."
NL=.venv/bin/newsletter
echo "== importing the seed article into a scratch folder and checking the library"
$NL import ../shared/seeds/microneedling-guide.txt --out var/demo-import || true
$NL check
echo
echo "Look at: content/articles/ (the library), var/demo-import/ (the seed, imported afresh)"
