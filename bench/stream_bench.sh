#!/usr/bin/env bash
# Full-scale check of the streaming reader's memory bound (include/sae/stream.hpp): writes float32
# .npy shards totalling DATA_MIB (default 2048) with d_in D (default 1024), evicts them from the
# page cache, streams one epoch in a forked child with a shuffle buffer sized to fit LIMIT_MIB
# (default 512), and prints the stated bound, the measured peak RSS growth and the throughput.
# It is the opt-in test StreamBench.FullScale of tests/test_stream.cpp; the CI-sized version
# (136 MiB of data against a 32 MiB limit) is Stream.ResidentMemoryStaysUnderTheBound.
#
# Usage: bench/stream_bench.sh [DATA_MIB [LIMIT_MIB [DIR]]]
#   DIR: where the shards go (default /tmp; needs DATA_MIB of free space; removed afterwards).
#   WARM=1 leaves the shards in the page cache (measures the reader, not the disk).
#   TEST_STREAM=path/to/test_stream uses an existing test binary (e.g. build/test_stream);
#   otherwise one is compiled into a temp dir (g++ with C++20, gtest, zlib; about a minute).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
data_mib=${1:-2048}
limit_mib=${2:-512}
dir=${3:-/tmp}
d=${D:-1024}

avail_mib=$(df -Pm "$dir" | awk 'NR == 2 {print $4}')
if [ "$avail_mib" -lt $((data_mib + 256)) ]; then
    echo "stream_bench: $dir has $avail_mib MiB free, need $data_mib MiB plus room; give another DIR" >&2
    exit 1
fi

bin=${TEST_STREAM:-}
if [ -z "$bin" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    bin=$tmp/test_stream
    echo "stream_bench: compiling $bin ..." >&2
    g++ -std=c++20 -O2 -Wall -I"$here/include" -I"$here/tests" -DSAE_SOURCE_DIR="\"$here\"" \
        -DSAE_BINARY="\"/bin/false\"" "$here/src/stream.cpp" "$here/src/data.cpp" "$here/src/rng.cpp" \
        "$here/tests/test_stream.cpp" "$here/tests/test_util.cpp" -lz -lgtest -lgtest_main -pthread -o "$bin"
fi

echo "stream_bench: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, shards in $dir" >&2
SAE_STREAM_BENCH_MIB=$data_mib SAE_STREAM_BENCH_LIMIT_MIB=$limit_mib SAE_STREAM_BENCH_DIR=$dir \
    SAE_STREAM_BENCH_D=$d SAE_STREAM_BENCH_WARM=${WARM:-0} "$bin" --gtest_filter=StreamBench.FullScale
