#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, only when they are missing.
# chromium: browser tests (driven by Playwright with executablePath=/usr/bin/chromium)
# postgresql: the store suite also runs against a real PostgreSQL server it starts itself
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${need[*]} (run as root or: sudo apt-get install ${need[*]}); those tests will be skipped" >&2
  exit 0
fi
echo "installing Debian packages: ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
