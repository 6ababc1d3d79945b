#!/usr/bin/env bash
# Every test: installs what is missing, builds, runs the whole suite through ctest.
#   scripts/test.sh [ctest arguments...]
#   scripts/test.sh --sanitize [gtest arguments...]
# builds with AddressSanitizer + UndefinedBehaviorSanitizer (scripts/build_sanitize.sh) and runs
# the test programs named in $DEDPO_SANITIZE_TESTS (default "core losses": tests/core and
# tests/losses) directly; any sanitizer report fails the run.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ "${1:-}" != "--sanitize" ]]; then
  bash "$root/scripts/setup.sh"
  bash "$root/scripts/build.sh"
  build=${DEDPO_BUILD_DIR:-$root/build}
  cd "$build"
  ctest --output-on-failure -j "$(nproc)" "$@"
  exit
fi

shift
bash "$root/scripts/setup.sh" --sanitize
build=${DEDPO_SANITIZE_BUILD_DIR:-$root/build-sanitize}
read -r -a tests <<<"${DEDPO_SANITIZE_TESTS:-core losses}"
bash "$root/scripts/build_sanitize.sh" "${tests[@]/#/test_}"
# LibTorch is not instrumented; no suppression has been needed (leaks included) for these tests.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OMP_NUM_THREADS=1
for test in "${tests[@]}"; do
  echo "sanitize: test_$test"
  (cd "$build" && "$build/bin/test_$test" "$@")
done
