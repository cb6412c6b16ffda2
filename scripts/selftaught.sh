#!/usr/bin/env bash
# Self-taught learning (UFLDL's exercise) on the 10,000 bundled MNIST digits:
#   1. `sae select` the digits 5-9 (no labels are used after this);
#   2. train each autoencoder of examples/selftaught/ on them: beta0 (non-sparse), kl (UFLDL's
#      settings), l1 (the same with an L1 penalty), topk (a modern TopK SAE);
#   3. `sae classify` the digits 0-4 (half train, half test, seeded split) with softmax regression
#      on each model's hidden activations, and on raw pixels;
#   4. print a Markdown table and write it to $OUT/table.md.
# Environment: OUT (default runs/selftaught), SAE (a built sae binary; default: scripts/setup.sh,
# then build/sae), THREADS (0 = all cores), MODELS (default "beta0 kl l1 topk"), SEED (first seed of
# the train/test split and softmax initialisation, default 0), SPLITS (how many split seeds, from
# SEED on, default 5). A model already trained in $OUT is reused (FORCE=1 retrains it).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SAE:-}" ]; then
  scripts/setup.sh
  SAE=build/sae
fi
OUT=${OUT:-runs/selftaught}
THREADS=${THREADS:-0}
MODELS=${MODELS:-beta0 kl l1 topk}
SEED=${SEED:-0}
SPLITS=${SPLITS:-5}
IMAGES=data/mnist10k/images-idx3-ubyte.gz
LABELS=data/mnist10k/labels-idx1-ubyte.gz
mkdir -p "$OUT"

# A field of a one-line JSON object (numbers and strings only).
field() { grep -o "\"$2\":[^,}]*" "$1" | head -1 | cut -d: -f2- | tr -d '"'; }
pct() { awk -v x="$1" 'BEGIN { printf "%.1f%%", 100 * x }'; }

echo "== select digits 5-9 (unlabelled training data) -> $OUT/digits59.npy"
sel=$("$SAE" select --data "$IMAGES" --labels "$LABELS" --classes 5-9 --out "$OUT/digits59.npy")
echo "$sel"
n59=$(echo "$sel" | sed -E 's/.*: ([0-9]+) of .*/\1/')

for m in $MODELS; do
  dir=$OUT/$m
  if [ -z "${FORCE:-}" ] && [ -f "$dir/model.safetensors" ] && grep -q '^trained' "$dir/train.log" 2>/dev/null; then
    echo "== $m: reusing $dir ($(grep '^trained' "$dir/train.log" | cut -d: -f1))"
  else
    echo "== $m: training examples/selftaught/$m.toml -> $dir"
    mkdir -p "$dir"
    "$SAE" train "examples/selftaught/$m.toml" --set "data=$OUT/digits59.npy" --set "threads=$THREADS" \
      --out "$dir" 2>&1 | tee "$dir/train.log" | grep -E '^(trained|outputs)' || { cat "$dir/train.log" >&2; exit 1; }
  fi
  "$SAE" eval --model "$dir" --data "$OUT/digits59.npy" > "$dir/eval.json"
done

for m in raw $MODELS; do
  echo "== classify digits 0-4 with features: $m (split seeds $SEED..$((SEED + SPLITS - 1)))"
  if [ "$m" = raw ]; then src=(--raw); else src=(--model "$OUT/$m"); fi
  for ((s = SEED; s < SEED + SPLITS; s++)); do
    "$SAE" classify --data "$IMAGES" --labels "$LABELS" "${src[@]}" --classes 0-4 --train-fraction 0.5 \
      --lambda 1e-4 --max-iterations 400 --seed "$s" --threads "$THREADS" --out "$OUT/classify-$m/seed$s" >/dev/null
    echo "   seed $s: train $(pct "$(field "$OUT/classify-$m/seed$s/classify.json" accuracy_train)")," \
         "test $(pct "$(field "$OUT/classify-$m/seed$s/classify.json" accuracy_test)")"
  done
done

describe() {
  case "$1" in
    raw) echo "raw pixels (unit_range)" ;;
    beta0) echo "autoencoder, no sparsity (β = 0)" ;;
    kl) echo "sparse autoencoder, KL (ρ = 0.1, β = 3)" ;;
    l1) echo "sparse autoencoder, L1 (λ₁ = $(grep -o '^l1_coefficient *= *[0-9.e-]*' examples/selftaught/l1.toml | cut -d= -f2 | tr -d ' '))" ;;
    topk) echo "TopK SAE (k = $(grep -o '^k *= *[0-9]*' examples/selftaught/topk.toml | cut -d= -f2 | tr -d ' '))" ;;
    *) echo "$1" ;;
  esac
}

{
  j0=$OUT/classify-raw/seed$SEED/classify.json
  echo "Self-taught learning on the bundled MNIST digits: features learnt without labels on the $n59"
  echo "digits 5-9; softmax regression (λ = 1e-4, with bias, L-BFGS ≤ 400 iterations) on the digits 0-4,"
  echo "trained on a seeded half ($(field "$j0" n_train) digits) and tested on the other half ($(field "$j0" n_test))."
  echo "Train and test accuracy for split seed $SEED, then the test accuracy over $SPLITS split seeds"
  echo "($SEED-$((SEED + SPLITS - 1))): mean ± standard deviation."
  echo
  echo "| features | d | train acc | test acc | test acc, $SPLITS splits | FVU (5-9) | L0 (5-9) | AE training |"
  echo "|---|---:|---:|---:|---:|---:|---:|---|"
  for m in raw $MODELS; do
    j=$OUT/classify-$m/seed$SEED/classify.json
    accs=$(for ((s = SEED; s < SEED + SPLITS; s++)); do field "$OUT/classify-$m/seed$s/classify.json" accuracy_test; done)
    spread=$(echo "$accs" | awk '{ s += $1; q += $1 * $1; n++ } END { m = s / n; v = n > 1 ? (q - n * m * m) / (n - 1) : 0;
                                   printf "%.1f ± %.1f%%", 100 * m, 100 * sqrt(v > 0 ? v : 0) }')
    if [ "$m" = raw ]; then
      fvu="–"; l0="–"; how="–"
    else
      fvu=$(awk -v x="$(field "$OUT/$m/eval.json" fvu)" 'BEGIN { printf "%.3f", x }')
      l0=$(awk -v x="$(field "$OUT/$m/eval.json" l0)" 'BEGIN { printf "%.1f", x }')
      how=$(grep '^trained' "$OUT/$m/train.log" | sed -E 's/^trained ([0-9]+) (iterations|steps).* in ([0-9.]+) s.*/\1 \2, \3 s/')
    fi
    echo "| $(describe "$m") | $(field "$j" d_features) | $(pct "$(field "$j" accuracy_train)") | $(pct "$(field "$j" accuracy_test)") | $spread | $fvu | $l0 | $how |"
  done
  echo
  echo "FVU and L0 from \`sae eval\` on the training digits 5-9 (L0: latents above the active threshold,"
  echo "0.5 for sigmoid units, 0 for ReLU). AE training: wall time with THREADS=$THREADS. Models:"
  echo "examples/selftaught/*.toml, seed 0. Made by scripts/selftaught.sh."
} > "$OUT/table.md"
echo
cat "$OUT/table.md"
