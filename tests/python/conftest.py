"""Shared fixtures: the CLI binary next to the package, tiny data sets, CLI runs."""
import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

import sae

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _binary():
    if os.environ.get("SAE_BINARY"):
        return pathlib.Path(os.environ["SAE_BINARY"])
    # build/python/sae/_sae*.so → build/sae
    here = pathlib.Path(sae._sae.__file__).resolve().parent.parent.parent / "sae"
    return here if here.exists() else ROOT / "build" / "sae"


SAE = _binary()


def cli(*args, check=True):
    """Runs `sae ARGS`; returns (returncode, stdout, stderr)."""
    r = subprocess.run([str(SAE), *map(str, args)], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"sae {' '.join(map(str, args))} failed: {r.stderr}")
    return r.returncode, r.stdout, r.stderr


def cli_error(*args):
    """The one-line message of a failing CLI call (without 'sae: error: ')."""
    rc, _, err = cli(*args, check=False)
    assert rc == 1, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("sae: error: "), err
    return line[len("sae: error: "):]


def cli_train(data, out, settings):
    sets = []
    for k, v in settings.items():
        sets += ["--set", f"{k}={sae._setting_text(k, v)}"]
    cli("train", *sets, "--set", f"data={data}", "--out", out)


def same_bytes(a, b):
    return pathlib.Path(a).read_bytes() == pathlib.Path(b).read_bytes()


def metrics(path):
    """metrics.jsonl without the timing field."""
    out = []
    for line in pathlib.Path(path).read_text().splitlines():
        j = json.loads(line)
        j.pop("samples_per_s")
        out.append(j)
    return out


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 20)).astype(np.float32)
    np.save(d / "x.npy", x)
    np.save(d / "x64.npy", x.astype(np.float64) * 1.1)
    np.save(d / "x16.npy", x.astype(np.float16))
    np.save(d / "u8.npy", rng.integers(0, 256, (300, 16)).astype(np.uint8))
    return d


@pytest.fixture(scope="session")
def x(data_dir):
    return np.load(data_dir / "x.npy")


# Small, fast settings of each family (threads fixed: same threads, same bits).
ADAM = dict(d_sae=8, optimizer="adam", epochs=3, batch_size=64, threads=1, log_every=5)
TOPK = dict(architecture="topk", k=3, d_sae=16, optimizer="adam", epochs=3, batch_size=64, threads=1,
            log_every=3, resample_dead=True, dead_threshold_samples=200)
LBFGS = dict(d_sae=8, max_iterations=15, threads=1)


@pytest.fixture(scope="session")
def topk_model(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("topk")
    cli_train(data_dir / "x.npy", out, TOPK)
    return out


@pytest.fixture(scope="session")
def classic_model(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("classic")
    cli_train(data_dir / "x.npy", out, ADAM)
    return out
