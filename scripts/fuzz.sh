#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ (scripts/build_sanitize.sh: clang, ASan + UBSan) and runs
# each for a bounded time, starting from its seed corpus fuzz/corpus/<target>/. New inputs go to
# <build>/corpus/<target>/, a crashing input to <build>/artifacts/<target>/. Prints executions per second and in total for each target; exits non-zero
# when a target crashes, leaks or hits undefined behaviour.
#   scripts/fuzz.sh [seconds per target, default 60] [target...]
#   scripts/fuzz.sh --runs N [target...]      (N inputs per target, however long that takes)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${DEDPO_SANITIZE_BUILD_DIR:-$root/build-sanitize}
if [[ "${1:-}" == --runs ]]; then
  runs=${2:-}
  [[ "$runs" =~ ^[0-9]+$ ]] || { echo "fuzz: --runs expects a number of inputs, got '$runs'" >&2; exit 2; }
  budget=(-runs="$runs")
  shift 2
else
  seconds=${1:-60}
  [[ "$seconds" =~ ^[0-9]+$ ]] || { echo "fuzz: expected a number of seconds or --runs N, got '$seconds'" >&2; exit 2; }
  budget=(-max_total_time="$seconds")
  shift || true
fi
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=($(cd "$root/fuzz/corpus" && ls))
fi

bash "$root/scripts/setup.sh" --sanitize
bash "$root/scripts/build_sanitize.sh" dedpo_fuzzers

# libFuzzer checks for leaks after each input itself; no suppression is needed.
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
failed=()
printf '%-24s %12s %14s %10s %s\n' target execs/s executions seconds result
for target in "${targets[@]}"; do
  mkdir -p "$build/corpus/$target" "$build/artifacts/$target"
  log="$build/fuzz-$target.log"
  status=ok
  started=$SECONDS
  "$build/bin/fuzz_$target" "${budget[@]}" -timeout=10 -print_final_stats=1 \
      -artifact_prefix="$build/artifacts/$target/" \
      "$build/corpus/$target" "$root/fuzz/corpus/$target" >"$log" 2>&1 || status=FAILED
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  printf '%-24s %12s %14s %10s %s\n' "$target" "${rate:-?}" "${execs:-?}" "$((SECONDS - started))" "$status"
  if [[ $status != ok ]]; then
    failed+=("$target")
    tail -n 40 "$log" >&2
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: ${failed[*]} failed; the inputs are in $build/artifacts/, the logs in $build/fuzz-*.log" >&2
  exit 1
fi
