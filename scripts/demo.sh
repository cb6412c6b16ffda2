#!/usr/bin/env bash
# Set-up, then the UFLDL exercise on the bundled MNIST digits: 784-196-784 sigmoid SAE,
# rho = 0.1, beta = 3, lambda = 3e-3, 400 L-BFGS iterations. Outputs in runs/mnist/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
OUT=${OUT:-runs/mnist}
build/sae train examples/mnist.toml --out "$OUT" "$@"
echo
echo "Model, settings, metrics and checkpoint are in $OUT/:"
ls -l "$OUT"
echo "Evaluate it:  build/sae eval --model $OUT --data data/mnist10k/images-idx3-ubyte.gz"
