#!/usr/bin/env bash
# Configures and builds dedpo into build/ (or $DEDPO_BUILD_DIR) with ccache.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${DEDPO_BUILD_DIR:-$root/build}
jobs=${DEDPO_JOBS:-$(nproc)}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$build" -j "$jobs"
