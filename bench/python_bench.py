#!/usr/bin/env python3
"""The Python package against the CLI on the same data (docs/python.md, "Speed and memory").

    PYTHONPATH=build/python /usr/bin/python3 bench/python_bench.py [--sae build/sae] [--threads 2]

1. Model.encode on a [4096, 768] float32 array vs `sae encode` on the same .npy (TopK, d_sae 4096):
   the CLI's time whole, and with its fixed cost (start-up, model load) taken off (the same
   command on a 1-row file); it still reads x.npy and writes h.npy [4096, 4096], so Model.encode
   is also timed with np.load and np.save around it.
2. sae.train on an in-memory array vs `sae train` on the same .npy: samples/s of the training
   loop (summary seconds; the CLI prints the same figure).
3. Streaming: sae.train from a Python generator of 1024-row batches vs `sae train` on .npy shards
   of the same rows, both through shuffle_buffer = 16384 samples.
Each figure is the best of --repeat runs (a shared machine is noisy: the best is the least
disturbed); the Python and CLI runs alternate, and the ratio of each back-to-back pair is
summarised by its median. Also checks that the array run and the CLI run wrote the same model
bytes."""
import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

import sae


def run_cli(binary, *args):
    t = time.perf_counter()
    r = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"sae {' '.join(map(str, args))}: {r.stderr}")
    return wall, r.stdout


def cli_train(binary, settings, data, out):
    sets = sum((["--set", f"{k}={sae._setting_text(k, v)}"] for k, v in settings.items()), [])
    _, out_text = run_cli(binary, "train", *sets, "--set", f"data={data}", "--out", out)
    m = re.search(r"trained (\d+) steps in ([0-9.]+) s", out_text)
    return m.group(0)


def main():
    here = pathlib.Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sae", default=str(here / "build" / "sae"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--train-samples", type=int, default=32768)
    ap.add_argument("--parts", default="1,2,3", help="which measurements, e.g. 3")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="sae-pybench-"))
    d_in, d_sae = 768, 4096
    base = dict(architecture="topk", k=32, d_sae=d_sae, optimizer="adam", batch_size=1024, threads=a.threads,
                log_every=1000, checkpoint_every=100000)
    print(f"sae python bench: {os.cpu_count()} CPUs, threads = {a.threads}, best of {a.repeat}")

    parts = {int(p) for p in a.parts.split(",")}
    X = rng.standard_normal((a.train_samples, d_in)).astype(np.float32)
    np.save(tmp / "train.npy", X)
    s = dict(base, epochs=1)
    if 1 in parts:
        encode_bench(a, tmp, X, base, d_in, d_sae)
    if 2 in parts:
        train_bench(a, tmp, X, s, d_in)
    if 3 in parts:
        stream_bench(a, tmp, X, s)
    for p in sorted(tmp.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    tmp.rmdir()


def encode_bench(a, tmp, X, base, d_in, d_sae):
    model_dir = tmp / "model"
    sae.train(X[:4096], model_dir, progress=False, **dict(base, epochs=1))
    m = sae.load(model_dir)
    x = X[:4096].copy()
    np.save(tmp / "x.npy", x)
    np.save(tmp / "x1.npy", x[:1])
    m.encode(x)  # warm
    py = min(_timed(lambda: m.encode(x)) for _ in range(a.repeat * 3))
    cli_full = min(run_cli(a.sae, "encode", "--model", model_dir, "--data", tmp / "x.npy", "--out", tmp / "h.npy")[0]
                   for _ in range(a.repeat))
    cli_one = min(run_cli(a.sae, "encode", "--model", model_dir, "--data", tmp / "x1.npy", "--out", tmp / "h1.npy")[0]
                  for _ in range(a.repeat))
    def with_files():  # what the command does: read the .npy, encode, write the .npy
        np.save(tmp / "hp.npy", m.encode(np.load(tmp / "x.npy")))

    py_files = min(_timed(with_files) for _ in range(a.repeat))
    same = np.array_equal(m.encode(x), np.load(tmp / "h.npy"))
    print(f"1. encode [4096, {d_in}] -> [4096, {d_sae}] (topk k=32): Model.encode {py * 1e3:.1f} ms "
          f"({py_files * 1e3:.1f} ms with np.load and np.save around it); sae encode {cli_full * 1e3:.1f} ms whole, "
          f"{(cli_full - cli_one) * 1e3:.1f} ms without its fixed cost ({cli_one * 1e3:.1f} ms for 1 row); "
          f"same bits: {same}")



def train_bench(a, tmp, X, s, d_in):
    pys, clis = [], []
    for i in range(a.repeat):  # back to back, so each pair saw about the same machine
        mp = sae.train(X, tmp / "py", progress=False, **s)
        pys.append(mp.summary["samples"] / mp.summary["seconds"])
        text = cli_train(a.sae, s, tmp / "train.npy", tmp / "cli")
        steps, secs = re.match(r"trained (\d+) steps in ([0-9.]+) s", text).groups()
        clis.append(int(steps) * 1024 / float(secs))
    same = (tmp / "py/model.safetensors").read_bytes() == (tmp / "cli/model.safetensors").read_bytes()
    print(f"2. train [{a.train_samples}, {d_in}] in memory, 1 epoch: sae.train {max(pys):,.0f} samples/s, "
          f"sae train {max(clis):,.0f} samples/s (best); {ratios(pys, clis)}; same model bytes: {same}")



def stream_bench(a, tmp, X, s):
    shards = 8
    rows = a.train_samples // shards
    for i in range(shards):
        np.save(tmp / f"shard-{i:02d}.npy", X[i * rows:(i + 1) * rows])
    ss = dict(s, shuffle_buffer=16384)

    def gen():
        for i in range(0, a.train_samples, 1024):
            yield X[i:i + 1024]

    gens, shs = [], []
    for i in range(a.repeat):
        mg = sae.train(gen(), tmp / "gen", progress=False, **ss)
        gens.append(mg.summary["samples"] / mg.summary["seconds"])
        text = cli_train(a.sae, ss, tmp / "shard-*.npy", tmp / "shards")
        steps, secs = re.match(r"trained (\d+) steps in ([0-9.]+) s", text).groups()
        shs.append(int(steps) * 1024 / float(secs))
    print(f"3. streamed, shuffle_buffer 16384: from a Python generator {max(gens):,.0f} samples/s, "
          f"from {shards} .npy shards (sae train) {max(shs):,.0f} samples/s (best); {ratios(gens, shs)}")


def ratios(a, b):
    r = sorted(x / y for x, y in zip(a, b))
    return f"ratio of back-to-back pairs: median {r[len(r) // 2]:.3f} (range {r[0]:.3f}-{r[-1]:.3f})"


def _timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
