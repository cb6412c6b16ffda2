#!/usr/bin/env bash
# Latent shards lower the memory per rank (docs/distributed.md "Memory per rank"): a TopK
# dictionary (d_in 256, d_sae 262,144, Adam: 2.1 GB of parameters, gradient and moments) that
# does not fit under a per-process address-space limit (ulimit -v) in one process, trained under
# the same limit by 4 ranks of latent_shards = 4, and the two models compared where both fit.
#   bench/shard_memory.sh [LIMIT_KB]   (default 2000000: 2 GB per process)
# Needs the build (scripts/setup.sh) and about 1 minute on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:-2000000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
build/sae synth --out "$work/data" --features 2000 --dim 256 --samples 8192 >/dev/null
sets=(--set data="$work/data/data.npy" --set architecture=topk --set k=32 --set d_sae=262144 --set batch_size=1024
      --set epochs=1 --set optimizer=adam --set log_every=4 --set checkpoint_every=1000 --set threads=1)
echo "== one process under ulimit -v $limit KB"
if (ulimit -v "$limit"; build/sae train --out "$work/one" "${sets[@]}") >"$work/one.log" 2>&1; then
  echo "it fitted (raise d_sae or lower the limit to see the refusal)"
else
  grep "sae: error" "$work/one.log"
fi
echo "== mpirun -np 4, latent_shards = 4, under the same limit (each rank's peak resident memory)"
(ulimit -v "$limit"; mpirun --oversubscribe -np 4 /usr/bin/time -f "  rank peak RSS %M KB" \
   build/sae train --out "$work/four" "${sets[@]}" --set latent_shards=4) 2>&1 | grep -E "ranks x|RSS|trained|error" || true
echo "== without the limit: one process's peak, and the two models compared"
/usr/bin/time -f "  one process peak RSS %M KB" build/sae train --out "$work/one" "${sets[@]}" 2>&1 | grep -E "RSS|trained"
/usr/bin/python3 - "$work/one/model.safetensors" "$work/four/model.safetensors" <<'PY'
import json, struct, sys
import numpy as np
def read(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n])
    return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], np.float32)
            for k, v in head.items() if k != "__metadata__"}
a, b = read(sys.argv[1]), read(sys.argv[2])
print("  max |one - four| / max |one| over the tensors: %.2g" % max(np.abs(a[k] - b[k]).max() / np.abs(a[k]).max() for k in a))
PY
