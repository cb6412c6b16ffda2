#!/usr/bin/env bash
# Many SAEs, one pass: wall time of one `sae train` with V variants against V separate runs of
# the same settings, measured alternating (multi, separate, multi, ...) for ROUNDS rounds; prints
# one line per measurement (wall and CPU seconds) and the medians. Two cases (docs/performance.md has the table):
#   io:      streamed .npy shards (200 MiB, evicted from the page cache before every run) through
#            a 65,536-sample shuffle buffer, a small TopK model (d_in 256 → d_sae 64, k 4..):
#            reading and shuffling the stream is a large share of a step;
#   product: d_in 768 → d_sae 16384 TopK (k 32), in memory: the products are nearly all of it.
# Every variant differs in k only (the same work per step), so V separate runs do V times the
# products and V times the reading; one multi run does V times the products and the reading once.
#
# Usage: bench/multi_bench.sh [io|product|both [V [ROUNDS [DIR]]]]   (defaults: both 4 3 /tmp)
#   SAE=path/to/sae (default build/sae); THREADS (default 1: on a shared, loaded machine two
#   threads of a small model spend most of their time waiting for each other).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
sae=${SAE:-$here/build/sae}
which_case=${1:-both}
V=${2:-4}
rounds=${3:-3}
dir=$(mktemp -d "${4:-/tmp}/multi-bench.XXXXXX")
trap 'rm -rf "$dir"' EXIT
threads=${THREADS:-1}

median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
# The shards out of the page cache (these files only), so that every run reads them from disk.
evict() { /usr/bin/python3 -c 'import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$@"; }
# timed FILE CMD...: appends "wall cpu" (seconds; cpu = user + sys) of CMD to FILE.
timed() {
    local file=$1
    shift
    /usr/bin/time -f '%e %U %S' -o "$dir/time" "$@" >/dev/null 2>"$dir/err" || { cat "$dir/err" >&2; exit 1; }
    awk '{printf "%s %.2f\n", $1, $2 + $3}' "$dir/time" >>"$file"
}

# bench CASE K0 SETTINGS...: V variants, variant i with k = K0 + i; the separate runs the same.
bench() {
    local name=$1 k0=$2
    shift 2
    local -a sets=()
    for s in "$@"; do sets+=(--set "$s"); done
    local -a variants=()
    for ((i = 0; i < V; i++)); do variants+=(--variant "name=v$i,k=$((k0 + i))"); done
    : >"$dir/$name.multi"
    : >"$dir/$name.separate"
    for ((r = 1; r <= rounds; r++)); do
        rm -rf "$dir/out"
        [ -n "${shards:-}" ] && evict $shards
        timed "$dir/m1" "$sae" train "${sets[@]}" "${variants[@]}" --out "$dir/out/multi"
        : >"$dir/s1"
        for ((i = 0; i < V; i++)); do
            [ -n "${shards:-}" ] && evict $shards
            timed "$dir/s1" "$sae" train "${sets[@]}" --set "k=$((k0 + i))" --out "$dir/out/v$i"
        done
        for ((i = 0; i < V; i++)); do  # the same bits, or the comparison means nothing
            cmp -s "$dir/out/multi/v$i/model.safetensors" "$dir/out/v$i/model.safetensors" ||
                { echo "multi_bench: variant v$i differs from its separate run" >&2; exit 1; }
        done
        local mw mc sw sc
        read -r mw mc < <(tail -1 "$dir/m1")
        read -r sw sc < <(awk '{w += $1; c += $2} END {print w, c}' "$dir/s1")
        printf '%s round %d: multi %.2f s wall (%.2f s cpu), %d separate %.2f s wall (%.2f s cpu)\n' \
            "$name" "$r" "$mw" "$mc" "$V" "$sw" "$sc"
        echo "$mw $mc" >>"$dir/$name.multi"
        echo "$sw $sc" >>"$dir/$name.separate"
    done
    local mw mc sw sc
    mw=$(cut -d' ' -f1 "$dir/$name.multi" | median)
    mc=$(cut -d' ' -f2 "$dir/$name.multi" | median)
    sw=$(cut -d' ' -f1 "$dir/$name.separate" | median)
    sc=$(cut -d' ' -f2 "$dir/$name.separate" | median)
    printf '%s: V=%d, medians: multi %.2f s wall (%.2f s cpu), %d separate %.2f s wall (%.2f s cpu); separate/multi %.2f wall, %.2f cpu\n' \
        "$name" "$V" "$mw" "$mc" "$V" "$sw" "$sc" "$(echo "$sw / $mw" | bc -l)" "$(echo "$sc / $mc" | bc -l)"
}

echo "multi_bench: $(uname -srm), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $threads threads, V=$V, $rounds rounds" >&2
common=(architecture=topk optimizer=adam lr=0.001 epochs=1 seed=0 threads=$threads log_every=1000000 checkpoint_every=1000000)
if [ "$which_case" = io ] || [ "$which_case" = both ]; then
    # 4 shards of 50,000 × 256 float32 (200 MiB), a 65,536-sample shuffle buffer.
    for s in 0 1 2 3; do "$sae" synth --out "$dir/synth$s" --features 512 --dim 256 --samples 50000 --seed "$s" >/dev/null; done
    mkdir -p "$dir/shards"
    for s in 0 1 2 3; do mv "$dir/synth$s/data.npy" "$dir/shards/shard$s.npy"; done
    shards=$(echo "$dir"/shards/shard*.npy)
    bench io 4 "${common[@]}" "data=$dir/shards/shard*.npy" shuffle_buffer=65536 normalize=none d_sae=64 batch_size=4096
    shards=
fi
if [ "$which_case" = product ] || [ "$which_case" = both ]; then
    "$sae" synth --out "$dir/big" --features 2048 --dim 768 --samples 8192 >/dev/null
    bench product 32 "${common[@]}" "data=$dir/big/data.npy" d_sae=16384 batch_size=1024
fi
