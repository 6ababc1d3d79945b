#!/usr/bin/env bash
# usage: run.sh BUILD_DIR PLUGIN_PROJECT WORK_DIR
set -euo pipefail
build=$1 project=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
cmake --install "$build" --prefix "$work/install" >/dev/null
cmake -S "$project" -B "$work/plugin-build" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$work/install" >/dev/null
cmake --build "$work/plugin-build" -j 2 >/dev/null
dedpo="$work/install/bin/dedpo"
export DEDPO_PLUGIN_PATH="$work/plugin-build/plugins"

fail() { echo "FAIL: $*"; exit 1; }
shown=$("$dedpo" plugins show noisy_oracle)
grep -q "annotator 'noisy_oracle' 1.0.0" <<<"$shown" || fail "plugin not listed: $shown"
grep -q "accuracy" <<<"$shown" || fail "options not shown: $shown"
# The installed program also still finds its own installed plugins.
"$dedpo" plugins | grep -q "dedpo " || fail "installed loss plugins missing"

cat > "$work/experiment.toml" <<TOML
[run]
name = "oot"
output = "runs"
threads = 1
[backbone]
plugin = "toy"
[data]
plugin = "toy_pairs"
n_pairs = 64
[annotator]
plugin = "noisy_oracle"
accuracy = 0.8
[loss]
plugin = "dedpo"
[train]
steps = 4
batch_size = 16
labelled_fraction = 0.25
TOML
bad=$("$dedpo" validate "$work/experiment.toml" --set annotator.accuracy=2.0 2>&1) && fail "accepted accuracy 2.0"
grep -q "option 'accuracy': expected a number in \[0, 1\]" <<<"$bad" || fail "wrong message: $bad"
out=$("$dedpo" run "$work/experiment.toml" --no-progress 2>&1) || fail "run failed: $out"
grep -q "steps: 4" <<<"$out" || fail "unexpected run output: $out"
echo "out-of-tree plugin: built, listed, validated and run"
