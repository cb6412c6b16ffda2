#!/usr/bin/env python3
"""Trains TinyGPT (lm/tinygpt.py) on the Python 3.11 standard library's top-level source files as
Debian 12 installs them (/usr/lib/python3.11/*.py, packages libpython3.11-minimal and
libpython3.11-stdlib; PSF licence, see NOTICE), and writes lm/tinygpt.pt and lm/heldout.txt.

    /usr/bin/python3 lm/train.py [--steps 1200] [--check-only]

The corpus is the file list with SHA-256 checksums in lm/corpus.sha256 (written by --write-list
from the installed files); a file whose checksum differs is named and the run stops, so the
weights are reproducible from the same files. Every 10th file in sorted order is held out: the
held-out loss below is measured on them, and lm/heldout.txt (the first 256 KiB of their
concatenation) is what the tests and scripts/lm-demo.sh feed the model. Seeded (torch.manual_seed, the
batch order from its own generator); the shipped weights took 3568 s on 2 shared cores (held-out
loss 1.752 nats/byte, train 1.646) and were not re-run to compare bits.
"""
import argparse
import hashlib
import math
import os
import sys
import time

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinygpt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = "/usr/lib/python3.11"
LIST = os.path.join(HERE, "corpus.sha256")
HELDOUT_BYTES = 256 * 1024


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def corpus(write_list):
    if write_list:
        names = sorted(n for n in os.listdir(ROOT) if n.endswith(".py"))
        with open(LIST, "w") as f:
            for n in names:
                f.write(f"{sha256(os.path.join(ROOT, n))}  {n}\n")
    entries = [line.split() for line in open(LIST)]
    bad = [n for h, n in entries if not os.path.exists(os.path.join(ROOT, n)) or sha256(os.path.join(ROOT, n)) != h]
    if bad:
        sys.exit(f"train.py: {len(bad)} corpus file(s) in {ROOT} are missing or differ from lm/corpus.sha256 "
                 f"(first: {bad[0]}); install Debian 12's libpython3.11-stdlib, or --write-list to retrain on yours")
    train, held = [], []
    for i, (_, n) in enumerate(entries):
        (held if i % 10 == 0 else train).append(open(os.path.join(ROOT, n), "rb").read())
    return b"\n\n".join(train), b"\n\n".join(held)


def loss_on(model, data, windows=256, context=128):
    batches = tinygpt.windows(data, context + 1, batch=32, limit=windows)
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            logits = model(b[:, :-1])
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1), reduction="sum").item()
            count += b[:, 1:].numel()
    return total / count


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write-list", action="store_true", help="rewrite lm/corpus.sha256 from the installed files")
    p.add_argument("--check-only", action="store_true", help="check the corpus and stop")
    a = p.parse_args()
    train, held = corpus(a.write_list)
    print(f"corpus: {len(train)} bytes to train on, {len(held)} held out")
    if a.check_only:
        return
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    model = tinygpt.TinyGPT(**tinygpt.CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    T = tinygpt.CONFIG["context"]
    data = torch.tensor(list(train), dtype=torch.uint8)
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.time()
    for step in range(a.steps):
        lr = a.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / a.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        start = torch.randint(0, len(data) - T - 1, (a.batch,), generator=g)
        b = torch.stack([data[s: s + T + 1] for s in start.tolist()]).long()   # [batch, T+1]
        logits = model(b[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == a.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  lr {lr:.2e}  {time.time() - t0:.0f} s", flush=True)
    model.eval()
    held_loss, train_loss = loss_on(model, held), loss_on(model, train)
    print(f"held-out loss {held_loss:.4f} nats/byte ({held_loss / math.log(2):.3f} bits), "
          f"train {train_loss:.4f}; {a.steps} steps of {a.batch}x{T} bytes in {time.time() - t0:.0f} s")
    tmp = tinygpt.WEIGHTS + ".tmp"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, tinygpt.WEIGHTS)
    with open(os.path.join(HERE, "heldout.txt.tmp"), "wb") as f:
        f.write(held[:HELDOUT_BYTES])
    os.replace(os.path.join(HERE, "heldout.txt.tmp"), os.path.join(HERE, "heldout.txt"))


if __name__ == "__main__":
    main()
