#!/usr/bin/env bash
# Two hosts on one machine, started the way a cluster starts a job (docs/distributed.md): network
# namespaces sae-h1 and sae-h2 joined by a veth pair (10.77.0.1, 10.77.0.2); mpirun runs in
# sae-h1 with a hostfile of the two addresses and starts its daemon on the other "host" through
# an rsh agent (here `ip netns exec`, on a cluster ssh); the ranks talk over OpenMPI's TCP
# transport only (btl tcp,self). Trains TopK on 2 ranks, one per host, and compares the weights
# with one process. Needs root (ip netns). Usage: bench/netns_cluster.sh [BUILD_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$here/build}" && pwd)
tmp=$(mktemp -d)
cleanup() {
    ip netns del sae-h1 2>/dev/null || true
    ip netns del sae-h2 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
ip netns add sae-h1
ip netns add sae-h2
ip link add sae-v1 type veth peer name sae-v2
ip link set sae-v1 netns sae-h1
ip link set sae-v2 netns sae-h2
ip -n sae-h1 addr add 10.77.0.1/24 dev sae-v1
ip -n sae-h2 addr add 10.77.0.2/24 dev sae-v2
for ns in sae-h1 sae-h2; do ip -n $ns link set lo up; done
ip -n sae-h1 link set sae-v1 up
ip -n sae-h2 link set sae-v2 up


cat >"$tmp/netns-rsh" <<'AGENT'
#!/bin/sh
# rsh agent: "netns-rsh HOST COMMAND..." runs COMMAND in HOST's namespace (as ssh HOST would).
host=$1; shift
case "$host" in
10.77.0.1) ns=sae-h1 ;;
10.77.0.2) ns=sae-h2 ;;
*) echo "netns-rsh: unknown host $host" >&2; exit 1 ;;
esac
exec ip netns exec "$ns" /bin/sh -c "$*"
AGENT
chmod +x "$tmp/netns-rsh"
printf '10.77.0.1 slots=1\n10.77.0.2 slots=1\n' >"$tmp/hosts"

"$build/sae" synth --out "$tmp/synth" --features 128 --dim 32 --samples 4000 >/dev/null
sets=(--set data="$tmp/synth/data.npy" --set architecture=topk --set k=4 --set d_sae=128 --set optimizer=adam
      --set lr=0.003 --set batch_size=200 --set epochs=2 --set threads=1)
"$build/sae" train "${sets[@]}" --out "$tmp/one" >/dev/null 2>&1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ip netns exec sae-h1 mpirun --hostfile "$tmp/hosts" -np 2 --map-by node \
    --mca plm_rsh_agent "$tmp/netns-rsh" --mca btl tcp,self \
    --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
    -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM \
    sh -c 'echo "rank $OMPI_COMM_WORLD_RANK on $(ip -o -4 addr show | grep -o "10\.77\.0\.[0-9]*")" >&2; exec "$0" "$@"' \
    "$build/sae" train "${sets[@]}" --out "$tmp/two" 2>&1 | grep -E "^rank|ranks|trained" || true
python3 - "$tmp/one/model.safetensors" "$tmp/two/model.safetensors" <<'PY'
import json, struct, sys
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n]); out = {}
    for k, v in h.items():
        if k == "__metadata__": continue
        s, e = v["data_offsets"]; raw = b[8 + n + s:8 + n + e]
        out[k] = struct.unpack("<%df" % (len(raw) // 4), raw)
    return out
a, b = load(sys.argv[1]), load(sys.argv[2])
d = max(abs(x - y) for k in a for x, y in zip(a[k], b[k])); m = max(abs(x) for k in a for x in a[k])
print(f"2 hosts over TCP vs one process: max |dw| / max |w| = {d / m:.2e}")
sys.exit(0 if d / m < 1e-3 else 1)  # Adam amplifies the sums' rounding (docs/distributed.md)
PY
