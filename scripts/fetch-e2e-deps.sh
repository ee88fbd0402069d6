#!/usr/bin/env bash
# Installs the official `openai` npm client, pinned by tests/e2e/package-lock.json, into
# tests/e2e/node_modules for the conformance test (tests/test_e2e_openai.cpp, which skips without it).
# Idempotent: nothing is fetched when the installed version already matches the lock file.
set -euo pipefail
cd "$(dirname "$0")/../tests/e2e"
want=$(node -p 'require("./package-lock.json").packages["node_modules/openai"].version')
have=$(node -p 'try { require("./node_modules/openai/package.json").version } catch { "" }')
[ "$want" = "$have" ] && exit 0
# npm ci: exactly the lock file's packages (and integrity hashes); no install scripts run.
npm ci --silent --no-audit --no-fund --ignore-scripts >/dev/null
