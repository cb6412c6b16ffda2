#!/usr/bin/python3
"""Side-by-side: the same training step in PyTorch and in `sae bench`, alternating, same threads.

Prerequisites: `scripts/setup.sh --bench` (as root) installs them: Debian's python3-torch and
python3-numpy for the system python3, and libopenblas0-pthread, without which Debian's PyTorch
runs the reference BLAS and the comparison means nothing: the script names the BLAS PyTorch
calls and refuses to report a ratio against the reference one. Build build/sae first (scripts/setup.sh).

Usage:
    /usr/bin/python3 bench/compare_torch.py [--sae build/sae] [--rounds 3] [--threads 2]
                                            [--only classic,topk,topk_bf16,topk_screen] [--json out.json]

Configurations (docs/performance.md):
  classic    784 -> 196 -> 784 sigmoid autoencoder, KL sparsity (rho 0.1, beta 3), weight decay
             3e-3, batch 256, Adam (bench/classic.toml).
  topk       768 -> 16384, TopK k = 32, batch 4096, Adam, unit-norm decoder rows: the gradient's
             component along each row removed before the step, rows renormalised after it
             (bench/topk.toml). PyTorch does it the usual way: topk, scatter into a dense h,
             dense decoder.
  topk_bf16  the same with dtype = bf16 (sae) and CPU autocast to bfloat16 (PyTorch); weights
             and optimiser state fp32 in both.
  topk_screen  topk with screen = bf16 (sae: fp32-exact selections and values through a bf16
             screening product) against PyTorch's fp32 topk step.

Each round runs `sae bench` then a PyTorch worker (a fresh process: `--worker NAME`), so both see
the same machine state; the table gives medians over rounds, the ratio of samples/s, and the
load average seen during the runs. Other processes' load skews absolute numbers; the ratios
measured alternating are what docs/performance.md reports.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CONFIGS = {
    # name: (sae bench arguments, torch worker kind, sae steps, torch steps)
    "classic": (["bench/classic.toml", "--d-in", "784"], "classic", 300, 40),
    "topk": (["bench/topk.toml", "--d-in", "768"], "topk", 12, 3),
    "topk_bf16": (["bench/topk.toml", "--d-in", "768", "--set", "dtype=bf16"], "topk_bf16", 12, 3),
    # fp32-exact screened TopK against PyTorch's fp32 step (screening changes no selection or value
    # of the fp32 definition, so the fp32 peer is the honest one)
    "topk_screen": (["bench/topk.toml", "--d-in", "768", "--set", "screen=bf16"], "topk", 12, 3),
}


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


# --------------------------------------------------------------------------- which BLAS
def blas_info():
    """The BLAS whose sgemm PyTorch actually calls, found at run time.

    Debian's PyTorch is built with BLAS_INFO=generic: it calls whatever libblas.so.3 the system's
    alternative points to. Without `libopenblas0-pthread` that is the reference BLAS (a few
    GFLOP/s), which no honest comparison may use. OpenBLAS may be loaded beside it (through
    liblapack.so.3) while sgemm still binds to the reference library, so the library is found by
    resolving `sgemm_` in libtorch_cpu's own lookup scope (dlsym on its handle, then dladdr).
    Returns a dict: library (real path), kind ("openblas", "reference", "mkl" or "other"), and
    OpenBLAS's own config, core and threads.
    """
    import ctypes
    import torch

    a = torch.ones(64, 64)
    (a @ a).sum().item()  # make sure the BLAS is loaded
    maps = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[-1] not in maps:
                maps.append(parts[-1])
    torch_cpu = next((p for p in maps if os.path.basename(p).startswith("libtorch_cpu.so")), None)
    info = {"kind": "other", "library": None, "libraries": [p for p in maps if "blas" in os.path.basename(p)]}

    class DlInfo(ctypes.Structure):
        _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p), ("sname", ctypes.c_char_p),
                    ("saddr", ctypes.c_void_p)]

    libdl = ctypes.CDLL(None)
    libdl.dlsym.restype = ctypes.c_void_p
    libdl.dlsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    libdl.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
    handle = ctypes.CDLL(torch_cpu)._handle if torch_cpu else None
    addr = libdl.dlsym(handle, b"sgemm_") if handle else None
    d = DlInfo()
    if addr and libdl.dladdr(addr, ctypes.byref(d)):
        path = os.path.realpath(d.fname.decode())
        info["library"] = path
        if "openblas" in path:
            info["kind"] = "openblas"
        elif "mkl" in path:
            info["kind"] = "mkl"
        elif os.path.basename(path).startswith("libblas.so"):
            info["kind"] = "reference"
    if info["kind"] == "openblas":
        lib = ctypes.CDLL(info["library"])
        for fn, key in (("openblas_get_config", "openblas_config"), ("openblas_get_corename", "openblas_core")):
            if hasattr(lib, fn):
                getattr(lib, fn).restype = ctypes.c_char_p
                info[key] = getattr(lib, fn)().decode().strip()
        if hasattr(lib, "openblas_get_num_threads"):
            info["openblas_threads"] = lib.openblas_get_num_threads()
    cfg = torch.__config__.show()
    info["torch_config"] = [t.strip(" ,-") for l in cfg.splitlines() for t in l.split(", ")
                            if "BLAS_INFO" in t or "MKL-DNN" in t or "CPU capability" in t]
    info["mkldnn"] = bool(torch.backends.mkldnn.is_available())
    info["env"] = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                               "OMP_NUM_THREADS") if k in os.environ}
    return info


def blas_line(info):
    """One line naming PyTorch's BLAS, for the table."""
    if info["kind"] == "openblas":
        return "OpenBLAS (%s; core %s; %s threads; %s)" % (
            info.get("openblas_config", "?"), info.get("openblas_core", "?"), info.get("openblas_threads", "?"),
            info["library"])
    return "%s (%s)" % (info["kind"], info["library"])


# --------------------------------------------------------------------------- PyTorch worker
def torch_worker(kind, steps, threads, warmup=2):
    import torch

    torch.set_num_threads(threads)
    blas = blas_info()
    if blas["kind"] not in ("openblas", "mkl"):
        sys.exit("compare_torch: PyTorch runs the %s BLAS (%s), not OpenBLAS: a ratio against it would flatter sae "
                 "many times over; install it with `scripts/setup.sh --bench` (apt-get install libopenblas0-pthread) "
                 "and run again" % (blas["kind"], blas["library"] or "none loaded"))
    torch.manual_seed(0)
    if kind == "classic":
        d_in, d_sae, m = 784, 196, 256
        rho, beta, lam = 0.1, 3.0, 3e-3
        r = (6.0 / (d_in + d_sae + 1)) ** 0.5
        W1 = ((torch.rand(d_in, d_sae) * 2 - 1) * r).requires_grad_()
        b1 = torch.zeros(d_sae, requires_grad=True)
        W2 = ((torch.rand(d_sae, d_in) * 2 - 1) * r).requires_grad_()
        b2 = torch.zeros(d_in, requires_grad=True)
        params = [W1, b1, W2, b2]
        data = torch.rand(4 * m, d_in)

        def step(x):
            h = torch.sigmoid(x @ W1 + b1)
            xh = torch.sigmoid(h @ W2 + b2)
            rec = 0.5 * ((xh - x) ** 2).sum() / m
            rh = h.mean(0).clamp(1e-12, 1 - 1e-12)
            kl = (rho * torch.log(rho / rh) + (1 - rho) * torch.log((1 - rho) / (1 - rh))).sum()
            wd = 0.5 * lam * ((W1 ** 2).sum() + (W2 ** 2).sum())
            loss = rec + beta * kl + wd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()

        opt = torch.optim.Adam(params, lr=1e-3)
        flop = 10.0 * m * d_in * d_sae
    else:
        d_in, d_sae, m, k = 768, 16384, 4096, 32
        bf16 = kind == "topk_bf16"
        W_dec = torch.randn(d_sae, d_in)
        W_dec = (W_dec / W_dec.norm(dim=1, keepdim=True) * 0.1).requires_grad_()
        W_enc = W_dec.detach().t().clone().contiguous().requires_grad_()
        b_enc = torch.zeros(d_sae, requires_grad=True)
        b_dec = torch.zeros(d_in, requires_grad=True)
        params = [W_enc, b_enc, W_dec, b_dec]
        feats = torch.randn(4 * d_in, d_in)
        feats /= feats.norm(dim=1, keepdim=True)
        idx = torch.randint(0, 4 * d_in, (4 * m, 16))
        coef = torch.rand(4 * m, 16, 1)
        data = (coef * feats[idx]).sum(1)
        with torch.no_grad():
            b_dec.copy_(data.mean(0))

        def forward(x):
            pre = (x - b_dec) @ W_enc + b_enc
            vals, ind = pre.topk(k, dim=1)
            h = torch.zeros_like(pre).scatter_(1, ind, torch.relu(vals))
            return h @ W_dec + b_dec

        def step(x):
            if bf16:
                with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
                    xh = forward(x)
                xh = xh.float()
            else:
                xh = forward(x)
            loss = 0.5 * ((xh - x) ** 2).sum() / m
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():  # unit-norm decoder: project the gradient, renormalise after
                g = W_dec.grad
                g.sub_((g * W_dec).sum(1, keepdim=True) / (W_dec * W_dec).sum(1, keepdim=True) * W_dec)
            opt.step()
            with torch.no_grad():
                W_dec.div_(W_dec.norm(dim=1, keepdim=True))
            return loss.item()

        opt = torch.optim.Adam(params, lr=1e-4)
        flop = 10.0 * m * d_in * d_sae

    batches = data.shape[0] // m
    times, cpu, losses = [], [], []
    for s in range(warmup + steps):
        x = data[(s % batches) * m:(s % batches + 1) * m]
        c0, t0 = time.process_time(), time.perf_counter()
        losses.append(step(x))
        if s >= warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    ms = statistics.median(times) * 1e3
    return {
        "framework": "pytorch " + torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": m,
        "ms_per_step": ms,
        "cpu_ms_per_step": statistics.median(cpu) * 1e3,
        "samples_per_s": m / ms * 1e3,
        "effective_gflops": flop / ms * 1e-6,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "blas": blas,
    }


# --------------------------------------------------------------------------- driver
def run_sae(sae, name, threads):
    args, _, steps, _ = CONFIGS[name]
    cmd = [sae, "bench", *args, "--steps", str(steps), "--set", "threads=%d" % threads]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def run_torch(name, threads):
    _, kind, _, steps = CONFIGS[name]
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--steps", str(steps),
           "--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "compare_torch: the PyTorch worker failed")
    return json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", default=os.path.join(ROOT, "build", "sae"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=",".join(CONFIGS))
    ap.add_argument("--json", help="also write every measurement here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(torch_worker(a.worker, a.steps, a.threads)))
        return

    names = [n for n in a.only.split(",") if n]
    for n in names:
        if n not in CONFIGS:
            sys.exit("compare_torch: unknown configuration %r; choose from %s" % (n, ", ".join(CONFIGS)))
    results = {n: {"sae": [], "torch": [], "load": []} for n in names}
    for r in range(a.rounds):
        for n in names:
            results[n]["load"].append(loadavg())
            results[n]["sae"].append(run_sae(a.sae, n, a.threads))
            results[n]["load"].append(loadavg())
            results[n]["torch"].append(run_torch(n, a.threads))
            results[n]["load"].append(loadavg())
            s, t = results[n]["sae"][-1], results[n]["torch"][-1]
            print("round %d %-10s sae %9.1f samples/s  torch %9.1f samples/s  ratio %6.2f  load %.2f" %
                  (r + 1, n, s["samples_per_s"], t["samples_per_s"], s["samples_per_s"] / t["samples_per_s"],
                   loadavg()), file=sys.stderr, flush=True)

    first = results[names[0]]["torch"][0]
    print("threads: %d; PyTorch %s, BLAS: %s; bf16 products through oneDNN (MKL-DNN) under autocast: %s" % (
        a.threads, first["framework"].split()[-1], blas_line(first["blas"]), first["blas"]["mkldnn"]))
    if first["blas"]["env"]:
        print("environment: " + ", ".join("%s=%s" % kv for kv in first["blas"]["env"].items()))
    print("| configuration | sae samples/s | PyTorch samples/s | ratio | ratio by CPU time | sae ms/step | "
          "PyTorch ms/step | sae GFLOP/s (dense-equiv.) | sae RSS MiB | PyTorch RSS MiB | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for n in names:
        R = results[n]
        ratios = [s["samples_per_s"] / t["samples_per_s"] for s, t in zip(R["sae"], R["torch"])]
        cpu_ratios = [t["cpu_ms_per_step"] / s["cpu_ms_per_step"] for s, t in zip(R["sae"], R["torch"])]
        med = lambda key, who: statistics.median(x[key] for x in R[who])
        print("| %s | %.0f | %.0f | %.1f× (%.1f–%.1f) | %.1f× | %.2f | %.1f | %.0f | %.0f | %.0f | %.1f–%.1f |" % (
            n, med("samples_per_s", "sae"), med("samples_per_s", "torch"), statistics.median(ratios),
            min(ratios), max(ratios), statistics.median(cpu_ratios), med("ms_per_step", "sae"),
            med("ms_per_step", "torch"), med("effective_gflops", "sae"), max(x["peak_rss_mib"] for x in R["sae"]),
            max(x["peak_rss_mib"] for x in R["torch"]), min(R["load"]), max(R["load"])))
    extra = []
    for n in names:
        s = results[n]["sae"]
        if "step_over_encoder_product" in s[0]:
            extra.append("%s: step / encoder product alone = %.2f (median), encoder product %.0f GFLOP/s" % (
                n, statistics.median(x["step_over_encoder_product"] for x in s),
                statistics.median(x["encoder_product_gflops"] for x in s)))
        if "effective_over_matmul" in s[0]:
            extra.append("%s: effective GFLOP/s / oneDNN matmul GFLOP/s at the same shapes = %.2f (matmul %.0f GFLOP/s)" % (
                n, statistics.median(x["effective_over_matmul"] for x in s),
                statistics.median(x["matmul_gflops"] for x in s)))
    if "topk" in names and "topk_bf16" in names:
        f = statistics.median(x["samples_per_s"] for x in results["topk"]["sae"])
        b = statistics.median(x["samples_per_s"] for x in results["topk_bf16"]["sae"])
        extra.append("sae bf16 / fp32 on the TopK shape = %.2f" % (b / f))
    for e in extra:
        print("\n" + e)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
