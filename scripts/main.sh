#!/usr/bin/env bash
# The main job: installs what is missing, builds, runs the seed paper's table on the toy world and
# prints it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
bash "$root/scripts/build.sh"
build=${DEDPO_BUILD_DIR:-$root/build}
"$build/bin/dedpo" grid "$root/experiments/toy/paper_table.toml" --jobs "$(nproc)" "$@"
