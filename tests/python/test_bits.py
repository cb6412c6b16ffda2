"""Python results against the CLI's files, bit for bit."""
import json

import numpy as np
import pytest

import sae
from conftest import ADAM, LBFGS, TOPK, cli, cli_train, metrics, same_bytes

CASES = {
    "adam-classic-unit_range": ADAM,
    "topk-resample": TOPK,
    "lbfgs": LBFGS,
    "jumprelu-expected_norm": dict(architecture="jumprelu", d_sae=16, optimizer="adam", epochs=2, batch_size=50,
                                   threads=1, normalize_activations="expected_norm"),
    "ufldl-sgd-2-threads": dict(d_sae=8, optimizer="sgd", lr=0.1, epochs=2, batch_size=100, threads=2,
                                normalize="ufldl"),
}


@pytest.mark.parametrize("name", CASES)
def test_train_on_array_gives_the_cli_bits(tmp_path, data_dir, x, name):
    s = CASES[name]
    cli_train(data_dir / "x.npy", tmp_path / "cli", s)
    m = sae.train(x, tmp_path / "py", progress=False, **s)
    assert same_bytes(tmp_path / "cli/model.safetensors", tmp_path / "py/model.safetensors")
    assert metrics(tmp_path / "cli/metrics.jsonl") == metrics(tmp_path / "py/metrics.jsonl")
    a = json.loads((tmp_path / "cli/cfg.json").read_text())
    b = m.cfg
    assert a.pop("data") != b.pop("data")  # the only difference: where the data came from
    assert a == b


@pytest.mark.parametrize("npy,source_dtype", [("x64.npy", np.float64), ("x16.npy", np.float16), ("u8.npy", np.uint8)])
def test_other_dtypes_give_the_bits_of_the_same_npy(tmp_path, data_dir, npy, source_dtype):
    a = np.load(data_dir / npy)
    assert a.dtype == source_dtype
    cli_train(data_dir / npy, tmp_path / "cli", ADAM)
    sae.train(a, tmp_path / "py", progress=False, **ADAM)
    assert same_bytes(tmp_path / "cli/model.safetensors", tmp_path / "py/model.safetensors")


def test_torch_tensor_and_strided_views_give_the_same_bits(tmp_path, data_dir, x):
    torch = pytest.importorskip("torch")
    cli_train(data_dir / "x.npy", tmp_path / "cli", ADAM)
    sae.train(torch.from_numpy(x), tmp_path / "t", progress=False, **ADAM)
    assert same_bytes(tmp_path / "cli/model.safetensors", tmp_path / "t/model.safetensors")
    wide = np.zeros((x.shape[0], 2 * x.shape[1]), np.float32)
    wide[:, ::2] = x
    view = wide[:, ::2]  # a strided view: copied once
    assert not view.flags.c_contiguous
    sae.train(view, tmp_path / "s", progress=False, **ADAM)
    assert same_bytes(tmp_path / "cli/model.safetensors", tmp_path / "s/model.safetensors")


def test_train_on_a_path_is_the_cli(tmp_path, data_dir):
    cli_train(data_dir / "x.npy", tmp_path / "cli", TOPK)
    sae.train(str(data_dir / "x.npy"), tmp_path / "py", progress=False, **TOPK)
    for f in ("model.safetensors", "cfg.json", "checkpoint.safetensors"):
        assert same_bytes(tmp_path / "cli" / f, tmp_path / "py" / f)


def test_streamed_shards_from_a_glob_are_the_cli(tmp_path, x):
    for i in range(3):
        np.save(tmp_path / f"shard-{i}.npy", x[i * 200:(i + 1) * 200])
    s = dict(TOPK, shuffle_buffer=150)
    cli_train(tmp_path / "shard-*.npy", tmp_path / "cli", s)
    sae.train(str(tmp_path / "shard-*.npy"), tmp_path / "py", progress=False, **s)
    assert same_bytes(tmp_path / "cli/model.safetensors", tmp_path / "py/model.safetensors")


@pytest.mark.parametrize("model", ["topk_model", "classic_model"])
def test_encode_and_evaluate_are_the_cli(request, tmp_path, data_dir, x, model):
    d = request.getfixturevalue(model)
    cli("encode", "--model", d, "--data", data_dir / "x.npy", "--out", tmp_path / "h.npy")
    m = sae.load(d)
    h = m.encode(x)
    assert h.dtype == np.float32 and h.shape == (600, m.d_sae)
    assert np.array_equal(h, np.load(tmp_path / "h.npy"))
    _, out, _ = cli("eval", "--model", d, "--data", data_dir / "x.npy")
    assert m.evaluate(x) == json.loads(out)
    # any batch size, the same rows
    assert np.array_equal(m.encode(x[17:18]), h[17:18])
    assert np.array_equal(m.encode(x[:5000]), h)


def test_evaluate_with_ground_truth_is_the_cli(tmp_path, topk_model, data_dir, x):
    f = np.random.default_rng(3).standard_normal((10, 20)).astype(np.float32)
    np.save(tmp_path / "f.npy", f)
    _, out, _ = cli("eval", "--model", topk_model, "--data", data_dir / "x.npy", "--ground-truth", tmp_path / "f.npy")
    assert sae.load(topk_model).evaluate(x, ground_truth=f) == json.loads(out)


def test_uint8_data_is_read_as_the_cli_reads_it(tmp_path, data_dir):
    u8 = np.load(data_dir / "u8.npy")
    cli_train(data_dir / "u8.npy", tmp_path / "m", ADAM)
    cli("encode", "--model", tmp_path / "m", "--data", data_dir / "u8.npy", "--out", tmp_path / "h.npy")
    m = sae.load(tmp_path / "m")
    assert np.array_equal(m.encode(u8), np.load(tmp_path / "h.npy"))


def test_torch_in_torch_out(topk_model, x):
    torch = pytest.importorskip("torch")
    m = sae.load(topk_model)
    h = m.encode(torch.from_numpy(x))
    assert isinstance(h, torch.Tensor) and torch.equal(h, torch.from_numpy(m.encode(x)))
    r = m.decode(h)
    assert isinstance(r, torch.Tensor) and r.shape == (600, 20)
    assert isinstance(m.reconstruct(torch.from_numpy(x)), torch.Tensor)


def test_decode_and_reconstruct(topk_model, x):
    m = sae.load(topk_model)
    t = m.tensors
    h = m.encode(x)
    xhat = m.decode(h)
    want = h.astype(np.float64) @ t["W_dec"].astype(np.float64) + t["b_dec"]
    np.testing.assert_allclose(xhat, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m.reconstruct(x), xhat, rtol=1e-5, atol=1e-5)


def test_save_writes_the_same_files(tmp_path, topk_model, classic_model):
    for d in (topk_model, classic_model):
        sae.load(d).save(tmp_path / d.name)
        for f in ("model.safetensors", "cfg.json"):
            assert same_bytes(d / f, tmp_path / d.name / f)


def test_model_attributes(topk_model):
    m = sae.load(topk_model)
    assert (m.d_in, m.d_sae, m.architecture) == (20, 16, "topk")
    assert m.cfg["k"] == 3 and m.cfg["d_in"] == 20
    t = m.tensors
    assert sorted(t) == ["W_dec", "W_enc", "b_dec", "b_enc"]
    assert t["W_enc"].shape == (20, 16) and t["W_dec"].shape == (16, 20)


def test_synth_is_the_cli(tmp_path):
    cli("synth", "--out", tmp_path, "--features", 12, "--dim", 8, "--samples", 100, "--seed", 4)
    s = sae.synth(12, 8, 100, seed=4)
    assert np.array_equal(s["data"], np.load(tmp_path / "data.npy"))
    assert np.array_equal(s["features"], np.load(tmp_path / "features.npy"))


def test_gradcheck_and_mmcs():
    g = sae.gradcheck(sparsity="kl")
    assert g["overall"] < 1e-8 and "W_enc" in g
    f = np.eye(4, 6, dtype=np.float32)
    r = sae.mmcs(f, np.vstack([f, f]))
    assert r["mmcs"] == pytest.approx(1.0)


def test_report(tmp_path, data_dir):
    cli_train(data_dir / "x.npy", tmp_path, ADAM)
    written = sae.report(tmp_path)
    assert any(p.endswith("report.html") for p in written)
