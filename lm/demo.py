#!/usr/bin/env python3
"""The model-in-the-loop demo (scripts/lm-demo.sh): harvest the residual stream after block 1 of
the shipped TinyGPT on held-out Python source (lm/heldout.txt), train TopK, BatchTopK and
JumpReLU SAEs on it with `sae`, splice each back into the model, and print the table (L0, FVU,
CE clean / spliced / zero, loss recovered, KL, dead fraction). Writes OUT/acts (the harvest),
OUT/<arch>/ (each model, with report.html and its feature browser), OUT/results.json and
OUT/table.md.

    PYTHONPATH=build/python /usr/bin/python3 lm/demo.py --out runs/lm [--windows 2048]

The first 80% of the windows train the SAEs, the last 20% measure them."""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import sae  # noqa: E402
import sae.torch as st  # noqa: E402
import tinygpt  # noqa: E402

HOOK = "blocks.1"


def variants(d_sae, k, epochs):
    common = dict(d_sae=d_sae, optimizer="adam", lr=1e-3, batch_size=1024, epochs=epochs, shuffle_buffer=65536,
                  threads=2, seed=0)
    return {
        "topk": dict(architecture="topk", k=k, **common),
        "batchtopk": dict(architecture="batchtopk", k=k, **common),
        # residual norms here are ≈ 19 (pre-activations of order 1): threshold and kernel width 1;
        # with 0.05 (the scale of unit-norm inputs) the thresholds barely move and L0 stays ≈ 400
        "jumprelu": dict(architecture="jumprelu", l0_coefficient=0.5, bandwidth=1.0, jumprelu_init_threshold=1.0,
                         **common),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/lm")
    p.add_argument("--windows", type=int, default=2048, help="128-byte windows of lm/heldout.txt to use (max 2048)")
    p.add_argument("--d-sae", type=int, default=1024)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--weights", default=tinygpt.WEIGHTS)
    p.add_argument("--sae-binary", default=os.path.join(os.path.dirname(HERE), "build", "sae"))
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = tinygpt.load(a.weights)
    text = open(os.path.join(HERE, "heldout.txt"), "rb").read()
    windows = tinygpt.windows(text, 128, batch=16, limit=a.windows)
    cut = max(1, int(len(windows) * 0.8))
    train_in, eval_in = windows[:cut], windows[cut:] or windows[-1:]
    t0 = time.time()
    acts = os.path.join(a.out, "acts")
    m = st.harvest(model, [HOOK], train_in, acts, vocab=tinygpt.vocab(), unembed=model.unembed, model_name="TinyGPT")
    print(f"harvest: {m['rows']} rows of {HOOK} (d_in {m['hooks'][0]['d_in']}) in {time.time() - t0:.1f} s")
    glob = os.path.join(acts, m["hooks"][0]["dir"], "*.npy")
    rows = []
    for name, settings in variants(a.d_sae, a.k, a.epochs).items():
        t0 = time.time()
        run = os.path.join(a.out, name)
        sm = sae.train(glob, run, progress=sys.stderr.isatty(), **settings)
        r = st.evaluate(model, HOOK, sm, eval_in)
        r["train_s"] = round(time.time() - t0, 1)
        rows.append((name, r))
        print(f"{name}: l0 {r['l0']:.1f}  fvu {r['fvu']:.3f}  loss recovered {r['loss_recovered']:.3f}", flush=True)
        rep = subprocess.run([a.sae_binary, "report", run, "--harvest", acts], capture_output=True, text=True)
        if rep.returncode != 0:  # older binaries without the browser: the report without it
            rep = subprocess.run([a.sae_binary, "report", run], capture_output=True, text=True)
        if rep.returncode != 0:
            sys.exit(f"lm/demo.py: sae report {run} failed: {rep.stderr.strip()}")
    head = ("| SAE | L0 | FVU | CE clean | CE spliced | CE zero | loss recovered | KL | dead fraction |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    table = head + "".join(
        f"| {n} | {r['l0']:.1f} | {r['fvu']:.3f} | {r['ce_clean']:.3f} | {r['ce_spliced']:.3f} | {r['ce_zero']:.3f} "
        f"| {r['loss_recovered']:.3f} | {r['kl']:.3f} | {r['dead_fraction']:.3f} |\n" for n, r in rows)
    info = (f"TinyGPT {HOOK} (residual stream after block 2 of 4), d_sae {a.d_sae}, k {a.k}; SAEs trained on "
            f"{m['rows']} tokens, measured on {sum(w.numel() for w in eval_in)} held-out tokens "
            f"(CE in nats per byte)\n\n")
    print("\n" + info + table)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(info + table)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({n: {k: v for k, v in r.items() if k != "density_log10_hist"} for n, r in rows}, f, indent=1)


if __name__ == "__main__":
    main()
