#!/usr/bin/env bash
# Configures the instrumented build in build-sanitize/ (or $DEDPO_SANITIZE_BUILD_DIR) and builds
# the named targets: clang, AddressSanitizer + UndefinedBehaviorSanitizer and libFuzzer's coverage
# instrumentation on everything dedpo compiles. The sanitized tests (scripts/test.sh --sanitize)
# and the fuzz targets (scripts/fuzz.sh) share it, so each source is compiled once for both.
#   scripts/build_sanitize.sh <target>...
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${DEDPO_SANITIZE_BUILD_DIR:-$root/build-sanitize}
targets=()
for target in "$@"; do targets+=(--target "$target"); done
cmake -S "$root" -B "$build" -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
      -DDEDPO_SANITIZE=ON -DDEDPO_FUZZ=ON -DDEDPO_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j "${DEDPO_JOBS:-$(nproc)}" "${targets[@]}"
