"""The shipped TinyGPT and the model-in-the-loop demo at CI scale (a few thousand tokens)."""
import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT, SAE

torch = pytest.importorskip("torch")
sys.path.insert(0, str(ROOT / "lm"))
import tinygpt  # noqa: E402


def test_shipped_model_predicts_held_out_text():
    model = tinygpt.load()
    text = (ROOT / "lm" / "heldout.txt").read_bytes()
    assert len(text) == 256 * 1024
    b = torch.cat(tinygpt.windows(text, 129, batch=32, limit=128))
    with torch.no_grad():
        logits = model(b[:, :-1])
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), b[:, 1:].reshape(-1)).item()
    # a unigram byte model of the same text, the bar any language model must clear
    counts = torch.bincount(b[:, 1:].reshape(-1), minlength=256).double()
    p = counts / counts.sum()
    unigram = -(p[p > 0] * p[p > 0].log()).sum().item()
    # lm/train.py measured 1.75 nats/byte over 256 windows of all the held-out files
    assert ce < 0.7 * unigram and ce < 2.2, (ce, unigram)


def test_demo_small(tmp_path):
    out = tmp_path / "lm"
    r = subprocess.run([sys.executable, str(ROOT / "lm" / "demo.py"), "--out", str(out), "--windows", "40",
                        "--epochs", "4", "--d-sae", "256", "--sae-binary", str(SAE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert set(res) == {"topk", "batchtopk", "jumprelu"}
    for name, m in res.items():
        assert m["ce_zero"] > m["ce_clean"], name
        assert all(math.isfinite(m[k]) for k in ("ce_spliced", "loss_recovered", "kl", "fvu", "l0")), name
        assert (out / name / "report.html").exists()
    assert res["topk"]["l0"] == pytest.approx(16)
    assert res["topk"]["loss_recovered"] > 0.3      # an SAE spliced in must beat zero ablation by far
    assert "| topk |" in (out / "table.md").read_text() and "| topk |" in r.stdout
