#!/usr/bin/env python3
"""UFLDL's sparse autoencoder exercise on the 10,000 bundled MNIST digits, from Python, with a
matplotlib grid of the 196 learnt filters.

    PYTHONPATH=build/python /usr/bin/python3 examples/python/mnist_ufldl.py [OUT_DIR] [--iterations N]

784-196-784 sigmoid autoencoder, KL sparsity rho = 0.1, beta = 3, weight decay 3e-3, 400
iterations of full-batch L-BFGS, 2 threads: examples/mnist.toml, so the model is the bits of
`sae train examples/mnist.toml --set threads=2` (the digits go in as a uint8 array, normalised
÷ 255 exactly as the CLI reads the IDX file). Expected output (3 minutes on 2 busy cores),
and a grid of pen strokes (docs/img/python_mnist_filters.png):

    digits [10000, 28, 28] uint8
    trained 400 iterations (max_iterations): J_total 12.114, mean rho_hat 0.1065
    eval: fvu 0.279, l0 15.9
    wrote runs/mnist_py/filters.png
"""
import argparse
import gzip
import pathlib

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import sae  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


def read_idx_images(path):
    raw = gzip.open(path).read()
    n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols)


ap = argparse.ArgumentParser()
ap.add_argument("out", nargs="?", default="runs/mnist_py")
ap.add_argument("--iterations", type=int, default=400)
args = ap.parse_args()

digits = read_idx_images(ROOT / "data/mnist10k/images-idx3-ubyte.gz")
print(f"digits [{', '.join(map(str, digits.shape))}] {digits.dtype}")
model = sae.train(digits, args.out, d_sae=196, sparsity="kl", rho=0.1, beta=3, weight_decay=3e-3,
                  optimizer="lbfgs", max_iterations=args.iterations, threads=2, log_every=10, checkpoint_every=25)
s = model.summary
print(f"trained {s['steps']} iterations ({s['stop_reason']}): J_total {s['J_total']:.3f}, "
      f"mean rho_hat {s['mean_rho_hat']:.4f}")
e = model.evaluate(digits)
print(f"eval: fvu {e['fvu']:.3f}, l0 {e['l0']:.1f}")

# Each hidden unit's filter: its column of W_enc as a 28x28 image, scaled to its own range.
W = model.tensors["W_enc"].T.reshape(-1, 28, 28)
fig, axes = plt.subplots(14, 14, figsize=(7, 7))
for w, ax in zip(W, axes.flat):
    ax.imshow(w, cmap="gray", vmin=w.min(), vmax=w.max())
    ax.axis("off")
fig.subplots_adjust(wspace=0.05, hspace=0.05, left=0, right=1, bottom=0, top=1)
png = pathlib.Path(args.out) / "filters.png"
fig.savefig(png, dpi=80)
print(f"wrote {png}")
