#!/usr/bin/env python3
"""A model of TopK training on N nodes (docs/distributed.md), built from parts measured here.

Per rank and step: encoder product 2*m*d_in*d_sae_rank flops at R; the sparse work (selection,
decoder, backward) c_s*m*k*d_in; the optimiser (Adam + unit-norm decoder) streams 28 bytes per
parameter at the memory rate; the collectives as their bytes over the network (ring-like sums:
2*(n-1)/n of the buffer each way). Latent shards as built (docs/distributed.md):
each rank's k best per row merged (allgather, 8 bytes an entry), the decoder's partial sums
reduced (m*d_in*4), and only the rank's 1/S of the parameters in the gradient sum.
Prints one row per (d_in, d_sae, nodes): the cheapest layout that fits in memory.
Efficiency: the job's work (products, sparse work, one optimiser pass over all parameters) spread
evenly over the nodes with no exchange, over the modelled step; no overlap of exchange and work.
Usage: bench/mpi_model.py [--bw GB/s] [--rate TFLOP/s] [--mem GB/s] [--ram GB] [--rows per node | --batch B]
"""
import argparse
import math

p = argparse.ArgumentParser()
p.add_argument("--bw", type=float, default=25.0, help="network, GB/s per node each way")
p.add_argument("--rate", type=float, default=5.3, help="fp32 product rate per node, TFLOP/s "
               "(16x the 330 GFLOP/s measured on this 2-core machine: a 32-core node)")
p.add_argument("--mem", type=float, default=280.0, help="memory rate per node for the optimiser, GB/s "
               "(16x the 17.6 GB/s Adam streams here: 25.2M parameters x 28 B in 40 ms)")
p.add_argument("--ram", type=float, default=256.0, help="memory per node, GB")
p.add_argument("--rows", type=int, default=4096, help="rows of the global batch per node (weak scaling)")
p.add_argument("--batch", type=int, default=0, help="a fixed global batch instead (strong scaling)")
p.add_argument("--k", type=int, default=32)
a = p.parse_args()

BW, R, MEM, RAM = a.bw * 1e9, a.rate * 1e12, a.mem * 1e9, a.ram * 1e9
CS = 3.2e-10 / 16  # s per (row * k * d_in): "about 1 ms per unit of k at batch 4096", d_in 768, 2 cores
ALPHA = 20e-6      # s per message (latency)


def step(d_in, d_sae, nodes, shards):
    reps = nodes // shards
    M = a.batch if a.batch else a.rows * nodes  # the global batch
    m = M / reps                        # rows a replica group costs
    ls = math.ceil(d_sae / shards)      # latents per rank
    P = 2 * d_in * ls + ls + d_in       # parameters per rank (b_dec replicated)
    enc = 2 * m * d_in * ls / R
    sparse = CS * m * a.k * d_in        # rows' k latents: every shard decodes its own, ~the same total
    opt = 28 * P / MEM
    grad = (2 * (reps - 1) / reps * 4 * P / BW + ALPHA * math.log2(reps)) if reps > 1 else 0
    merge = ((shards - 1) * m * a.k * 8 / BW + ALPHA * math.log2(shards)) if shards > 1 else 0
    dec = (2 * (shards - 1) / shards * m * d_in * 4 / BW + ALPHA * math.log2(shards)) if shards > 1 else 0
    mem = 16 * P + 4 * m * d_in * 6     # params, grad, 2 moments; batch, x_hat and partial sums
    # ideal: the whole job's work spread evenly, no exchange, no repeated optimiser
    P_all = 2 * d_in * d_sae + d_sae + d_in
    ideal = (2 * M * d_in * d_sae / R + CS * M * a.k * d_in + 28 * P_all / MEM) / nodes
    t = enc + sparse + opt + grad + merge + dec
    parts = {"product": enc, "sparse": sparse, "optimiser": opt, "gradient sum": grad,
             "top-k merge": merge, "decoder sum": dec}
    return t, ideal / t, mem, max(parts, key=parts.get), parts


print(f"network {a.bw:g} GB/s, {a.rate:g} TFLOP/s and {a.mem:g} GB/s memory and {a.ram:g} GB per node, "
      + (f"global batch {a.batch}" if a.batch else f"{a.rows} rows per node") + f", k {a.k}")
print("| d_in | d_sae | nodes | replicas only: ms/step, efficiency | best layout (shards x replicas) | ms/step | efficiency | GB per rank | largest part | exchange share |")
print("|---:|---:|---:|---|---|---:|---:|---:|---|---:|")
for d_in in (768, 4096):
    for d_sae in (65536, 1 << 20, 1 << 24):
        for nodes in (8, 16, 32, 64):
            best = None
            for shards in [s for s in range(1, nodes + 1) if nodes % s == 0]:
                t, eff, mem, big, parts = step(d_in, d_sae, nodes, shards)
                if mem > RAM:
                    continue
                if best is None or t < best[0]:
                    best = (t, eff, mem, big, parts, shards)
            t1, e1, mem1, _, _ = step(d_in, d_sae, nodes, 1)
            rep_only = f"{1e3 * t1:.1f}, {100 * e1:.0f}%" if mem1 <= RAM else f"does not fit ({mem1 / 1e9:.0f} GB)"
            if best is None:
                print(f"| {d_in} | {d_sae} | {nodes} | {rep_only} | does not fit | | | | | |")
                continue
            t, eff, mem, big, parts, shards = best
            comm = (parts["gradient sum"] + parts["top-k merge"] + parts["decoder sum"]) / t
            print(f"| {d_in} | {d_sae} | {nodes} | {rep_only} | {shards} x {nodes // shards} | {1e3 * t:.1f} | {100 * eff:.0f}% | "
                  f"{mem / 1e9:.1f} | {big} | {100 * comm:.0f}% |")
