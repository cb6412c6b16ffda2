#!/usr/bin/env bash
# The model in the loop, end to end (README "A real network"): builds what is missing
# (scripts/setup.sh), then harvests the shipped TinyGPT's residual stream on held-out text, trains
# TopK, BatchTopK and JumpReLU SAEs, splices each back, prints the table and writes
# runs/lm/<arch>/report.html with the feature browser. Arguments go to lm/demo.py
# (e.g. --windows 64 for a quick run; --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PYTHONPATH="${BUILD_DIR:-build}/python" /usr/bin/python3 lm/demo.py --sae-binary "${BUILD_DIR:-build}/sae" "$@"
