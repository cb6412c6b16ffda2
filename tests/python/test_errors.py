"""Every bad input raises a Python exception carrying the CLI's one-line message; the
interpreter never crashes."""
import json
import shutil

import numpy as np
import pytest

import sae
from conftest import ADAM, cli_error


def test_error_types():
    assert issubclass(sae.Error, ValueError)
    assert issubclass(sae.DTypeError, sae.Error) and issubclass(sae.DTypeError, TypeError)


@pytest.mark.parametrize("setting", ["optimzer=adam", "d_sae=-8", "d_sae=1.5", "optimizer=newton", "tied=maybe",
                                     "sparsity=kl encoder_activation=relu", "k=0 architecture=topk"])
def test_bad_settings_carry_the_cli_message(data_dir, x, setting):
    pairs = [s.split("=") for s in setting.split()]
    want = cli_error("train", *sum((["--set", f"{k}={v}"] for k, v in pairs), []), "--set", f"data={data_dir / 'x.npy'}",
                     "--out", data_dir / "never")
    with pytest.raises(sae.Error) as e:
        sae.train(x, progress=False, **dict(pairs))
    assert str(e.value) == want


def test_settings_of_the_wrong_python_type(x):
    with pytest.raises(sae.DTypeError, match="setting 'd_sae': a dict is not a setting value"):
        sae.train(x, progress=False, d_sae={"a": 1})
    with pytest.raises(sae.Error, match="setting 'lbfgs_history' = 0 is out of range"):
        sae.train(x, progress=False, lbfgs_history=0)


def test_a_missing_path_is_the_cli_message(tmp_path):
    want = cli_error("train", "--set", "data=/nonexistent/x.npy", "--out", tmp_path / "a")
    with pytest.raises(sae.Error) as e:
        sae.train("/nonexistent/x.npy", tmp_path / "b", progress=False)
    assert str(e.value) == want


def test_missing_and_malformed_models(tmp_path, classic_model, data_dir):
    for bad in [tmp_path / "none"]:
        want = cli_error("eval", "--model", bad, "--data", data_dir / "x.npy")
        with pytest.raises(sae.Error) as e:
            sae.load(bad)
        assert str(e.value) == want
    d = tmp_path / "m"
    shutil.copytree(classic_model, d)
    (d / "cfg.json").write_text("{ not json")
    want = cli_error("eval", "--model", d, "--data", data_dir / "x.npy")
    with pytest.raises(sae.Error) as e:
        sae.load(d)
    assert str(e.value) == want
    cfg = json.loads((classic_model / "cfg.json").read_text())
    cfg["format_version"] = 99
    (d / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(sae.Error, match="format_version 99 is newer than this sae understands"):
        sae.load(d)
    shutil.copy(classic_model / "cfg.json", d / "cfg.json")
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00")
    want = cli_error("eval", "--model", d, "--data", data_dir / "x.npy")
    with pytest.raises(sae.Error) as e:
        sae.load(d)
    assert str(e.value) == want


def test_wrong_width(topk_model, x):
    m = sae.load(topk_model)
    with pytest.raises(sae.Error, match="the data has 5 features per sample but the model expects d_in = 20"):
        m.encode(x[:, :5])
    with pytest.raises(sae.Error, match="the data has 21 features"):
        m.evaluate(np.zeros((3, 21), np.float32))
    with pytest.raises(sae.Error, match="h: has 3 latents per row but the model has d_sae = 16"):
        m.decode(np.zeros((2, 3), np.float32))
    with pytest.raises(sae.Error, match="ground_truth: features have d = 4 but the model has d_in = 20"):
        m.evaluate(x, ground_truth=np.eye(4, dtype=np.float32))


def test_nan_data(tmp_path, topk_model, x):
    bad = x.copy()
    bad[7, 3] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    want = cli_error("train", "--set", f"data={tmp_path / 'bad.npy'}", "--out", tmp_path / "o")
    with pytest.raises(sae.Error) as e:
        sae.train(bad, progress=False)
    assert str(e.value) == want.replace(str(tmp_path / "bad.npy"), "data")
    m = sae.load(topk_model)
    with pytest.raises(sae.Error, match=r"^x: sample 7, feature 3 \(counting from 0\) is NaN"):
        m.encode(bad)
    bad[7, 3] = np.inf
    with pytest.raises(sae.Error, match="is inf"):
        m.evaluate(bad)
    with pytest.raises(sae.Error, match="h: sample 7, feature 3 .* is inf"):
        m.decode(bad[:, :16])


def test_nan_in_a_streamed_batch(tmp_path, x):
    bad = x.copy()
    bad[250, 1] = np.nan
    with pytest.raises(sae.Error, match=r"data: sample 250 of pass 0, feature 1 \(counting from 0\) is NaN"):
        sae.train([bad[:200], bad[200:]], tmp_path, progress=False, architecture="topk", optimizer="adam",
                  shuffle_buffer=100, epochs=1)


@pytest.mark.parametrize("shape", [(20,), (), (0, 20), (5, 0)])
def test_one_d_and_empty_arrays(topk_model, shape):
    m = sae.load(topk_model)
    a = np.zeros(shape, np.float32)
    with pytest.raises(sae.Error, match="give a 2-d array" if len(shape) < 2 else "the data set has no samples"):
        m.encode(a)
    with pytest.raises(sae.Error, match="give a 2-d array" if len(shape) < 2 else "the data set has no samples"):
        sae.train(a, progress=False)


@pytest.mark.parametrize("dtype", [np.int64, np.int8, np.complex64, bool, object, np.float128])
def test_wrong_dtypes(topk_model, x, dtype):
    m = sae.load(topk_model)
    with pytest.raises(sae.DTypeError, match="is not supported; give float32"):
        m.encode(x.astype(dtype))
    with pytest.raises(TypeError):
        sae.train(x.astype(dtype), progress=False)


def test_not_an_array(topk_model):
    m = sae.load(topk_model)
    with pytest.raises(sae.DTypeError, match="x: a list is not an array"):
        m.encode([[1.0] * 20])
    with pytest.raises(sae.DTypeError, match="data: a int is not training data"):
        sae.train(3, progress=False)
    with pytest.raises(sae.DTypeError, match=r"data \(batch 0\): a str is not an array"):
        sae.train(["abc"], progress=False, architecture="topk", optimizer="adam", shuffle_buffer=10)


def test_strided_and_other_layouts_are_copied_once(topk_model, x):
    m = sae.load(topk_model)
    h = m.encode(x)
    assert np.array_equal(m.encode(np.asfortranarray(x)), h)
    assert np.array_equal(m.encode(x[::-1])[::-1], h)
    assert np.array_equal(m.encode(x.astype(">f4")), h)
    wide = np.repeat(x, 2, axis=1)
    assert np.array_equal(m.encode(wide[:, ::2]), h)


def test_streaming_rules_are_the_engines(tmp_path, x):
    with pytest.raises(sae.Error, match="set shuffle_buffer > 0"):
        sae.train(iter([x]), tmp_path, progress=False, architecture="topk", optimizer="adam", epochs=1)
    with pytest.raises(sae.Error, match="these samples are in memory already; leave shuffle_buffer at 0"):
        sae.train(x, tmp_path, progress=False, architecture="topk", optimizer="adam", shuffle_buffer=10)
    with pytest.raises(sae.Error, match='optimizer = "lbfgs" needs the whole data set in memory'):
        sae.train([x], tmp_path, progress=False, architecture="topk", shuffle_buffer=10)
    with pytest.raises(sae.Error, match="lr_schedule = \"cosine\" needs the run's length"):
        sae.train([x], tmp_path, progress=False, architecture="topk", optimizer="adam", shuffle_buffer=10,
                  lr_schedule="cosine")
    with pytest.raises(sae.Error, match="a batch has 5 features per sample but the first had 20"):
        sae.train([x, x[:, :5]], tmp_path, progress=False, architecture="topk", optimizer="adam", shuffle_buffer=10,
                  epochs=1)
    with pytest.raises(sae.Error, match="data: the data has no samples"):
        sae.train([], tmp_path, progress=False, architecture="topk", optimizer="adam", shuffle_buffer=10)


def test_resume_without_a_checkpoint_or_with_other_settings(tmp_path, x):
    with pytest.raises(sae.Error, match="no checkpoint to resume from"):
        sae.train(x, tmp_path / "none", resume=True, progress=False, **ADAM)
    sae.train(x, tmp_path / "a", progress=False, **ADAM)
    with pytest.raises(sae.Error, match="the checkpoint was made with d_sae = 8 but this run has 9"):
        sae.train(x, tmp_path / "a", resume=True, progress=False, **dict(ADAM, d_sae=9))


def test_gpu_tensors_are_refused_clearly(topk_model):
    torch = pytest.importorskip("torch")
    t = torch.zeros(3, 20, device="meta")
    with pytest.raises(sae.Error, match="x: a tensor on meta; sae computes on the CPU"):
        sae.load(topk_model).encode(t)
