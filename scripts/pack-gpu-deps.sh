#!/usr/bin/env bash
# Copies this machine's build dependencies (the Debian packages' headers, libraries and CMake
# files) into .gpu-deps/ for bench/gpu.sh on the GPU machine, which has CUDA, CMake and a compiler
# but no package registry. Run it here before a device call and name .gpu-deps in the call's
# `carry`. Boost (160 MB of headers) is cut to the headers our sources include (a g++ -M scan).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu-deps
rm -rf "$out"
mkdir -p "$out"
PACKAGES=(nlohmann-json3-dev libcli11-dev libfmt-dev libfmt9 libgtest-dev libgmock-dev libpcre2-dev libpcre2-8-0
          libutf8proc-dev libutf8proc2 libsentencepiece-dev libsentencepiece0 libxxhash-dev libxxhash0
          libssl-dev libssl3)
for p in "${PACKAGES[@]}"; do
  dpkg -L "$p" | grep -vE '^/usr/share/(doc|man|lintian)' | while read -r f; do
    if [ -f "$f" ] || [ -L "$f" ]; then mkdir -p "$out$(dirname "$f")" && cp -a "$f" "$out$f"; fi
  done
done
# Boost: the headers any source or test includes, plus its CMake package files.
mapfile -t sources < <(ls src/*/*.cpp src/*/*/*.cpp tests/*.cpp examples/*.cpp 2>/dev/null)
for s in "${sources[@]}"; do
  g++ -std=c++20 -Isrc -Iinclude -Itests -M "$s" 2>/dev/null || true
done | tr ' \\' '\n\n' | grep '^/usr/include/boost/' | sort -u | while read -r f; do
  mkdir -p "$out$(dirname "$f")" && cp -a "$f" "$out$f"
done
for d in /usr/lib/x86_64-linux-gnu/cmake/Boost-* /usr/lib/x86_64-linux-gnu/cmake/boost_headers-* \
         /usr/lib/x86_64-linux-gnu/cmake/BoostDetectToolset-*; do
  [ -e "$d" ] && mkdir -p "$out$(dirname "$d")" && cp -a "$d" "$out$d"
done
# Shared libraries suffice, except GoogleTest's (static only in Debian).
find "$out" -name '*.a' ! -name 'libgtest*' ! -name 'libgmock*' -delete
du -sh "$out"
