#!/usr/bin/env bash
# Installs the npm packages of the end-to-end tests, each pinned by its package-lock.json:
#   tests/e2e: the official `openai` client, for the conformance test (tests/test_e2e_openai.cpp);
#   tests/ui:  `playwright-core`, which drives Debian's chromium for the web page test
#              (tests/test_ui.cpp; no browser download: it uses /usr/bin/chromium).
# Each test skips without its package. Idempotent: nothing is fetched when the installed version
# already matches the lock file.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
for entry in tests/e2e:openai tests/ui:playwright-core; do
  dir="$root/${entry%%:*}" pkg="${entry#*:}"
  cd "$dir"
  want=$(node -p "require('./package-lock.json').packages['node_modules/$pkg'].version")
  have=$(node -p "try { require('./node_modules/$pkg/package.json').version } catch { '' }")
  [ "$want" = "$have" ] && continue
  # npm ci: exactly the lock file's packages (and integrity hashes); no install scripts run.
  npm ci --silent --no-audit --no-fund --ignore-scripts >/dev/null
done
