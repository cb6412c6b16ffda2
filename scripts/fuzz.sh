#!/usr/bin/env bash
# Runs one libFuzzer target for a fixed time:  scripts/fuzz.sh TARGET SECONDS [libFuzzer flags...]
# TARGET: idx, npy, safetensors, cfg_json, toml, array_read (or fuzz_<name>), or `all` (each in
# turn, SECONDS each). Builds the targets into build-fuzz/ with clang (-DSAE_FUZZ=ON) if needed.
# New inputs go to build-fuzz/corpus/TARGET/ (the seeds in fuzz/corpus/TARGET/ are only read);
# a crashing input is written to build-fuzz/artifacts/TARGET/ and the script exits non-zero.
# Prints one summary line per target: executions, exec/s, crashes.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(idx npy safetensors cfg_json toml array_read image)
usage() {
  echo "usage: scripts/fuzz.sh TARGET SECONDS [libFuzzer flags...]; TARGET: ${TARGETS[*]} or all" >&2
  exit 2
}
[ $# -ge 2 ] || usage
target=${1#fuzz_}
seconds=$2
shift 2
[[ "$seconds" =~ ^[0-9]+$ ]] || usage
if [ "$target" = all ]; then
  for t in "${TARGETS[@]}"; do "$0" "$t" "$seconds" "$@"; done
  exit 0
fi
[[ " ${TARGETS[*]} " == *" $target "* ]] || usage

scripts/setup.sh --packages
FUZZ_DIR=${FUZZ_BUILD_DIR:-build-fuzz}
if [ ! -f "$FUZZ_DIR/build.ninja" ]; then
  cmake -S . -B "$FUZZ_DIR" -G Ninja -DSAE_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$FUZZ_DIR" -j "$(nproc)" --target "fuzz_$target" >/dev/null

case $target in
  npy) dict=fuzz/dict/npy.dict ;;
  toml) dict=fuzz/dict/toml.dict ;;
  safetensors|cfg_json) dict=fuzz/dict/json.dict ;;
  *) dict= ;;
esac
work="$FUZZ_DIR/corpus/$target" artifacts="$FUZZ_DIR/artifacts/$target"
log="$FUZZ_DIR/fuzz_$target.log"
mkdir -p "$work" "$artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
command -v llvm-symbolizer >/dev/null && export ASAN_SYMBOLIZER_PATH=${ASAN_SYMBOLIZER_PATH:-$(command -v llvm-symbolizer)}

# -timeout: an input that takes over 10 s is a hang; -rss_limit_mb: over 2 GB is a failure too
# (every parser checks sizes against the input before allocating).
rc=0
"$FUZZ_DIR/fuzz/fuzz_$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 -artifact_prefix="$artifacts/" ${dict:+-dict=$dict} "$@" \
  "$work" "fuzz/corpus/$target" >"$log" 2>&1 || rc=$?

final_stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
runs=$(final_stat number_of_executed_units) rate=$(final_stat average_exec_per_sec)
if [ "$rc" = 72 ]; then  # libFuzzer's exit code when it gets SIGINT/SIGTERM
  echo "fuzz_$target: interrupted after ${runs:-?} executions" >&2
  exit 130
fi
if [ "$rc" != 0 ]; then
  echo "fuzz_$target: FAILED (exit $rc) after ${runs:-?} executions; the report:" >&2
  grep -v -E '^(INFO|#[0-9]|	NEW_FUNC)' "$log" | tail -60 >&2
  echo "fuzz_$target: crashing input in $artifacts/ (replay: $FUZZ_DIR/fuzz/fuzz_$target FILE)" >&2
  exit 1
fi
echo "fuzz_$target: ${seconds} s, ${runs:-0} executions, ${rate:-0} exec/s, 0 crashes, corpus $(ls "$work" | wc -l) + $(ls "fuzz/corpus/$target" | wc -l) seeds"
