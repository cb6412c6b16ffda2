#!/usr/bin/env bash
# Sanitizer runs (CI runs this after scripts/test.sh):
#  1. the whole project and test suite built with AddressSanitizer + UndefinedBehaviorSanitizer
#     (-DSAE_SANITIZE=ON, g++) into build-asan/, every ctest test run there, leaks checked;
#  2. every libFuzzer target (fuzz/, clang) for FUZZ_SECONDS (default 20) on its seed corpus.
# Any sanitizer report, failing test or fuzzer crash fails the script. See docs/reliability.md.
# Extra arguments go to ctest (e.g. -R Regression).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --packages

# halt_on_error: the first report fails the test. detect_leaks: LeakSanitizer works here (also
# with oneDNN's JIT and libgomp's thread pool; no suppressions needed). The init-order checks
# catch static-initialisation order bugs; detect_stack_use_after_return catches dangling stack
# references at some cost in speed.
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:check_initialization_order=1:strict_init_order=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

ASAN_DIR=${ASAN_BUILD_DIR:-build-asan}
start=$SECONDS
if [ ! -f "$ASAN_DIR/build.ninja" ]; then
  cmake -S . -B "$ASAN_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSAE_SANITIZE=ON >/dev/null
fi
cmake --build "$ASAN_DIR" -j "$(nproc)"
echo "sanitize: build-asan built in $((SECONDS - start)) s"
start=$SECONDS
(cd "$ASAN_DIR" && ctest --output-on-failure -j "$(nproc)" "$@")
echo "sanitize: ASan + UBSan test suite passed in $((SECONDS - start)) s"

start=$SECONDS
for t in idx npy safetensors cfg_json toml array_read; do
  scripts/fuzz.sh "$t" "${FUZZ_SECONDS:-20}"
done
echo "sanitize: fuzz targets built and run in $((SECONDS - start)) s, no crash"
