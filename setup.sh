#!/usr/bin/env bash
# Installs what Apus needs, builds it, and runs the main job. With no arguments it generates from
# a tiny built-in demo model with random weights (it answers with random tokens); pass apus
# arguments to run something else, e.g. ./setup.sh generate --model /path/to/Qwen2.5-0.5B-Instruct --prompt-ids 9707,11,1879
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target apus
if [ $# -eq 0 ]; then
  echo "Demo: a tiny random-weight Qwen2-shaped model (its output is random tokens)."
  set -- generate --load-format dummy --config-preset tiny --prompt-ids 9707,11,1879 --max-tokens 16 --temperature 0 --logprobs 2 --json
fi
exec build/apus "$@"
