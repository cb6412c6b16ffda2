"""sae.train(..., variants=[...]): several models from one pass over the data, each the bits of a
separate run of its merged settings (and of the CLI's --variant)."""
import numpy as np
import pytest

import sae
from conftest import TOPK, cli, same_bytes
from test_training import STREAM, Batches

FILES = ("model.safetensors", "checkpoint.safetensors", "cfg.json")
VARIANTS = [{"name": "k3"}, {"name": "k6", "k": 6, "d_sae": 24},
            {"name": "gated", "architecture": "gated", "l1_coefficient": 0.01, "resample_dead": False}]


def test_variants_equal_separate_runs_and_the_cli(tmp_path, x, data_dir):
    models = sae.train(x, tmp_path / "multi", variants=VARIANTS, progress=False, **TOPK)
    assert list(models) == ["k3", "k6", "gated"]
    sets = []
    for k, v in TOPK.items():
        sets += ["--set", f"{k}={sae._setting_text(k, v)}"]
    variant_args = []
    for v in VARIANTS:
        variant_args += ["--variant", ",".join([f"name={v['name']}"] + [f"{k}={sae._setting_text(k, x)}"
                                                                      for k, x in v.items() if k != "name"])]
    cli("train", *sets, "--set", f"data={data_dir / 'x.npy'}", *variant_args, "--out", tmp_path / "cli")
    for v in VARIANTS:
        settings = dict(TOPK, **{k: x for k, x in v.items() if k != "name"})
        alone = sae.train(x, tmp_path / v["name"], progress=False, **settings)
        for f in FILES:
            assert same_bytes(tmp_path / "multi" / v["name"] / f, tmp_path / v["name"] / f), (v["name"], f)
        assert same_bytes(tmp_path / "multi" / v["name"] / "model.safetensors",
                          tmp_path / "cli" / v["name"] / "model.safetensors")
        np.testing.assert_array_equal(models[v["name"]].encode(x[:50]), alone.encode(x[:50]))
        assert models[v["name"]].summary["steps"] == alone.summary["steps"]


def test_streamed_variants_and_the_callback(tmp_path, x):
    seen = []
    models = sae.train(Batches(x), tmp_path / "m", variants=[{"name": "a"}, {"name": "b", "k": 5}], progress=False,
                       callback=lambda step, m: seen.append((m["variant"], step)), **dict(STREAM, epochs=2))
    alone = sae.train(Batches(x), tmp_path / "b", progress=False, **dict(STREAM, epochs=2, k=5))
    assert same_bytes(tmp_path / "m" / "b" / "model.safetensors", tmp_path / "b" / "model.safetensors")
    assert {v for v, _ in seen} == {"a", "b"}
    assert [s for v, s in seen if v == "a"] == [s for v, s in seen if v == "b"]
    assert set(models) == {"a", "b"}


def test_refusals(tmp_path, x):
    with pytest.raises(sae.Error, match="variant 'b': 'batch_size' defines the data stream"):
        sae.train(x, tmp_path / "r", variants=[{"name": "a"}, {"name": "b", "batch_size": 7}], **TOPK)
    with pytest.raises(sae.Error, match="variant 'a': the name is given twice"):
        sae.train(x, tmp_path / "r", variants=[{"name": "a"}, {"name": "a", "k": 2}], **TOPK)
    with pytest.raises(sae.Error, match="unknown setting 'kk'; did you mean 'k'"):
        sae.train(x, tmp_path / "r", variants=[{"name": "a", "kk": 2}], **TOPK)
    with pytest.raises(sae.DTypeError, match="a 'name'"):
        sae.train(x, tmp_path / "r", variants=[{"k": 2}], **TOPK)
    with pytest.raises(sae.DTypeError, match="an empty list"):
        sae.train(x, tmp_path / "r", variants=[], **TOPK)


def test_a_variant_needing_the_run_length_is_refused_with_a_batch_source(tmp_path, x):
    with pytest.raises(sae.Error, match="variant 'c': lr_schedule = \"cosine\" needs the run's length"):
        sae.train(Batches(x), tmp_path / "c", variants=[{"name": "a"}, {"name": "c", "lr_schedule": "cosine"}],
                  progress=False, **STREAM)
