#!/bin/sh
# encode of ROWS synthetic rows (default 1M) at 768 -> 16384, k 32 (bench/topk.toml), screen off
# (today's oneDNN fp32 path) and bf16 alternating, ROUNDS rounds (default 2). One JSON object per
# run; docs/performance.md "Screened TopK" records the figures with the load average.
# Run from the repository root after building: bench/encode_screen.sh [ROWS] [ROUNDS]
set -e
ROWS=${1:-1048576}
ROUNDS=${2:-2}
r=0
while [ "$r" -lt "$ROUNDS" ]; do
    for sc in off bf16; do
        build/sae bench bench/topk.toml --d-in 768 --set screen=$sc --encode "$ROWS"
    done
    r=$((r + 1))
done
