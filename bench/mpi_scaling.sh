#!/usr/bin/env bash
# Data replicas and latent shards on this machine (docs/distributed.md): TopK d_in D (default
# 256) -> L latents (default 4096), k 32, Adam, STEPS steps (default 20) of global batch B
# (default 2048) from synthetic data; strong scaling (the same global batch over 1, 2, 4 ranks,
# one thread each, and one rank with 2 threads for reference; replicas, latent shards, a 2 x 2
# mesh) and weak scaling (B per rank). Prints the seconds per step and what rank 0 handed to
# each collective per step (bytes, calls, milliseconds).
# Usage: bench/mpi_scaling.sh [BUILD_DIR]   (D=, L=, B=, STEPS= in the environment)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}
d=${D:-256} l=${L:-4096} b=${B:-2048} steps=${STEPS:-20}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
"$build/sae" synth --out "$tmp/synth" --features $((2 * d)) --dim "$d" --samples $((b * 4 * steps)) >/dev/null
run() {  # ranks threads batch label [latent_shards]
    local ranks=$1 threads=$2 batch=$3 label=$4 shards=${5:-1} pre=""
    [ "$ranks" -gt 1 ] && pre="mpirun --oversubscribe -np $ranks"
    local out
    out=$($pre "$build/sae" train --out "$tmp/run" --set data="$tmp/synth/data.npy" --set architecture=topk --set k=32 \
        --set d_sae="$l" --set optimizer=adam --set lr=1e-4 --set batch_size="$batch" --set threads="$threads" \
        --set max_samples=$((batch * steps)) --set latent_shards="$shards" --set epochs=1 --set log_every=1000000 --set checkpoint_every=1000000 2>/dev/null)
    local secs
    secs=$(sed -n 's/^trained [0-9]* steps in \([0-9.]*\) s.*/\1/p' <<<"$out")
    printf '%-28s ranks %d threads %d batch %5d: %7.1f ms/step  %s\n' "$label" "$ranks" "$threads" "$batch" \
        "$(awk -v s="$secs" -v n="$steps" 'BEGIN {print 1000 * s / n}')" \
        "$(grep '^[0-9]* ranks; per step' <<<"$out" | sed 's/^[0-9]* ranks; per step, rank 0 sent: //')"
}
echo "TopK d_in $d, d_sae $l, k 32, Adam, $steps steps"
run 1 1 "$b" "strong: one process"
run 1 2 "$b" "strong: one process, 2 thr"
run 2 1 "$b" "strong: 2 replicas"
run 4 1 "$b" "strong: 4 replicas (oversub)"
run 2 1 "$b" "strong: 2 latent shards" 2
run 4 1 "$b" "strong: 4 latent shards (oversub)" 4
run 4 1 "$b" "strong: 2 shards x 2 replicas (oversub)" 2
run 2 1 $((2 * b)) "weak: 2 replicas"
run 4 1 $((4 * b)) "weak: 4 replicas (oversub)"
# Latent shards' weak scaling is in the dictionary: L latents per rank.
l=$((2 * ${L:-4096})) run 2 1 "$b" "weak: 2 shards, 2L latents" 2
l=$((4 * ${L:-4096})) run 4 1 "$b" "weak: 4 shards, 4L latents (oversub)" 4
