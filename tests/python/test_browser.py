"""sae.report's feature browser arguments: the same page as `sae report --harvest --hook`, and the
same one-line errors."""
import json

import numpy as np
import pytest

import sae
from conftest import cli, cli_error, cli_train, same_bytes


def _harvest(root, rng):
    """A harvest of 3 sequences of 40 byte tokens, hook "blocks.0" [120, 12] in two shards."""
    (root / "blocks.0").mkdir(parents=True)
    tokens = rng.integers(0, 20, size=120).astype(np.int32)
    positions = np.stack([np.repeat(np.arange(3), 40), np.tile(np.arange(40), 3)], 1).astype(np.int32)
    x = rng.normal(size=(120, 12)).astype(np.float32)
    np.save(root / "blocks.0/000000.npy", x[:50])
    np.save(root / "blocks.0/000001.npy", x[50:])
    np.save(root / "tokens.npy", tokens)
    np.save(root / "positions.npy", positions)
    np.save(root / "unembed.npy", rng.normal(size=(12, 20)).astype(np.float32))
    (root / "vocab.json").write_text(json.dumps([chr(97 + i) for i in range(19)] + ["\n"]))
    (root / "manifest.json").write_text(json.dumps({
        "format": "sae-harvest", "version": 1, "model": "random", "complete": True, "sequences": 3, "rows": 120,
        "tokens": "tokens.npy", "positions": "positions.npy", "vocab": "vocab.json", "unembed": "unembed.npy",
        "hooks": [{"name": "blocks.0", "d_in": 12, "rows": 120, "dtype": "float32",
                   "shards": ["blocks.0/000000.npy", "blocks.0/000001.npy"]}]}))
    return x


def test_report_harvest_passes_through(tmp_path):
    h = tmp_path / "harvest"
    x = _harvest(h, np.random.default_rng(0))
    np.save(tmp_path / "x.npy", x)
    settings = dict(architecture="topk", k=3, d_sae=16, optimizer="adam", epochs=2, batch_size=20, threads=1)
    cli_train(tmp_path / "x.npy", tmp_path / "run", settings)  # data outside the harvest: pass it
    cli("report", tmp_path / "run", "--harvest", h, "--hook", "blocks.0", "--latents", 5, "--contexts", 3)
    cli_page = (tmp_path / "run/report.html").read_bytes()
    written = sae.report(tmp_path / "run", harvest=h, hook="blocks.0", latents=5, contexts=3)
    assert written[0].endswith("report.html")
    page = (tmp_path / "run/report.html").read_bytes()
    assert page == cli_page
    data = page.split(b'id="feature-data">')[1].split(b"</script>")[0]
    d = json.loads(data)
    assert len(d["L"]) == 5 and all(len(L["c"]) <= 3 for L in d["L"])
    assert d["vocab"][19] == "\u21b5"
    sae.report(tmp_path / "run", harvest=h, latents="all")  # the only hook; every latent
    d = json.loads((tmp_path / "run/report.html").read_bytes().split(b'id="feature-data">')[1].split(b"</script>")[0])
    assert len(d["L"]) == 16


def test_report_harvest_errors_match_the_cli(tmp_path):
    h = tmp_path / "harvest"
    x = _harvest(h, np.random.default_rng(1))
    np.save(tmp_path / "x.npy", x[:, :10])
    cli_train(tmp_path / "x.npy", tmp_path / "run", dict(architecture="topk", k=2, d_sae=8, optimizer="adam",
                                                        epochs=1, batch_size=20, threads=1))
    for kwargs, args in [(dict(hook="nope"), ["--hook", "nope"]), (dict(), [])]:
        msg = cli_error("report", tmp_path / "run", "--harvest", h, *args)
        with pytest.raises(sae.Error) as e:
            sae.report(tmp_path / "run", harvest=h, **kwargs)
        assert str(e.value) == msg
    assert "its hooks: blocks.0" in cli_error("report", tmp_path / "run", "--harvest", h, "--hook", "nope")
    assert "d_in = 12" in msg and "d_in = 10" in msg
    with pytest.raises(sae.Error, match="--latents"):
        sae.report(tmp_path / "run", harvest=h, latents="some")
