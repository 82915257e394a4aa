#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, only when they are missing.
# chromium: browser tests (driven by Playwright with executablePath=/usr/bin/chromium)
# postgresql: the store suite also runs against a real PostgreSQL server it starts itself
# spamassassin: tests/test_email_clients.py scores the finished email with `spamassassin -L -t`
set -euo pipefail

# axe-core: the accessibility rules tests/test_site_browser.py injects into Chromium. From the npm
# registry into .venv/node (ignored by git); without npm the test skips and says why.
AXE_VERSION=4.10.3
AXE_PREFIX=${AXE_PREFIX:-"$(cd "$(dirname "$0")/.." && pwd)/.venv/node"}
if ! grep -qs "\"version\": \"$AXE_VERSION\"" "$AXE_PREFIX/node_modules/axe-core/package.json"; then
  if command -v npm >/dev/null 2>&1; then
    npm install --prefix "$AXE_PREFIX" --no-save --no-audit --no-fund --loglevel=error "axe-core@$AXE_VERSION" >/dev/null \
      || echo "could not install axe-core from npm; the accessibility test will be skipped" >&2
  else
    echo "npm not found: axe-core not installed; the accessibility test will be skipped (apt-get install npm)" >&2
  fi
fi

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
# postfix: tests/test_bounces_mta.py runs a private instance that writes a real DSN; dovecot-imapd: the IMAP poller's
# test runs a throwaway Dovecot (neither is started as a system service by the tests)
command -v postfix >/dev/null 2>&1 || [ -x /usr/sbin/postfix ] || need+=(postfix)
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || need+=(dovecot-imapd)
command -v spamassassin >/dev/null 2>&1 || need+=(spamassassin)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${need[*]} (run as root or: sudo apt-get install ${need[*]}); those tests will be skipped" >&2
  exit 0
fi
echo "installing Debian packages: ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
