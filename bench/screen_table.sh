#!/bin/sh
# The screened TopK step against d_sae and k (docs/performance.md "Screened TopK"): 768 -> d_sae
# for d_sae in 16384 65536 and k in 32 64 128, batch 4096, Adam (bench/topk.toml), screen off
# and bf16 alternating; one line per run: ms per step, the fp32 encoder product alone, their
# ratio, the bf16 product alone, candidates per row, the share of rows that fell back.
# Run from the repository root after building: bench/screen_table.sh [STEPS] (default 3)
set -e
STEPS=${1:-3}
for d_sae in 16384 65536; do
    for k in 32 64 128; do
        for sc in off bf16; do
            build/sae bench bench/topk.toml --d-in 768 --set d_sae=$d_sae --set k=$k --set screen=$sc \
                --steps "$STEPS" --warmup 1 | /usr/bin/python3 -c "
import json, sys
j = json.load(sys.stdin)
s = j.get('screen') or {}
print('d_sae %6d  k %3d  screen %-4s  %8.1f ms/step  fp32 product %7.1f ms  step/product %.2f  bf16 product %s  candidates/row %s  fell back %s  load %s' % (
    $d_sae, $k, '$sc', j['ms_per_step'], j['encoder_product_ms'], j['step_over_encoder_product'],
    '%.1f ms' % s['bf16_encoder_product_ms'] if s else '-', '%.1f' % s['candidates_per_row'] if s else '-',
    '%.4f' % s['fallback_share'] if s else '-', j['loadavg_before']))"
        done
    done
done
