"""sae.torch (harvest, activations, splice, evaluate) against hand-written PyTorch computations,
on a small TinyGPT (lm/tinygpt.py) and on module shapes a Hugging Face model has (dict inputs,
tuple outputs, .logits)."""
import json
import os
import struct
import sys

import numpy as np
import pytest

import sae
from conftest import ROOT, cli

torch = pytest.importorskip("torch")
import sae.torch as st  # noqa: E402

sys.path.insert(0, str(ROOT / "lm"))
import tinygpt  # noqa: E402


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    return tinygpt.TinyGPT(vocab=256, context=16, layers=2, d_model=32, heads=4).eval()


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (4, 16), generator=g) for _ in range(6)]


def hand_capture(model, name, inp):
    """The hook point's output by a forward hook written here."""
    got = []
    h = dict(model.named_modules())[name].register_forward_hook(lambda m, i, o: got.append(o.detach().clone()))
    with torch.no_grad():
        model(inp)
    h.remove()
    return got[0]


# ---- a model with tensors chosen here --------------------------------------------------------

def read_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n])
    meta = head.pop("__metadata__", None)
    out = {k: np.frombuffer(b[8 + n + v["data_offsets"][0]: 8 + n + v["data_offsets"][1]], np.float32).reshape(v["shape"])
           for k, v in head.items()}
    return out, meta


def write_safetensors(path, tensors, meta):
    head, off, blobs = {}, 0, []
    for k, a in tensors.items():
        a = np.ascontiguousarray(a, np.float32)
        head[k] = dict(dtype="F32", shape=list(a.shape), data_offsets=[off, off + a.nbytes])
        off += a.nbytes
        blobs.append(a.tobytes())
    if meta:
        head["__metadata__"] = meta
    h = json.dumps(head).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def sae_with(tmp_path, name, d, W_enc, W_dec):
    """A `standard` SAE [d → W_enc.shape[1]] whose tensors are the given ones (biases zero)."""
    x = np.random.default_rng(0).standard_normal((64, d)).astype(np.float32)
    out = tmp_path / name
    sae.train(x, out, architecture="standard", d_sae=W_enc.shape[1], optimizer="adam", epochs=1,
              batch_size=32, threads=1, progress=False)
    t, meta = read_safetensors(out / "model.safetensors")
    t["W_enc"], t["W_dec"] = W_enc, W_dec
    t["b_enc"], t["b_dec"] = np.zeros_like(t["b_enc"]), np.zeros_like(t["b_dec"])
    write_safetensors(out / "model.safetensors", t, meta)
    return sae.load(out)


def identity_sae(tmp_path, d):
    """relu(x) − relu(−x) = x, exactly in floating point."""
    eye = np.eye(d, dtype=np.float32)
    return sae_with(tmp_path, "identity", d, np.concatenate([eye, -eye], 1), np.concatenate([eye, -eye], 0))


def zero_sae(tmp_path, d):
    return sae_with(tmp_path, "zero", d, np.eye(d, dtype=np.float32), np.zeros((d, d), np.float32))


# ---- harvest / activations ---------------------------------------------------------------------

def shards(out, hook):
    m = st.read_manifest(out)
    h = next(h for h in m["hooks"] if h["name"] == hook)
    return np.concatenate([np.load(out / s) for s in h["shards"]])


def test_harvest_equals_a_hand_written_hook(gpt, batches, tmp_path):
    m = st.harvest(gpt, ["blocks.0", "blocks.1.mlp"], batches, tmp_path / "h", rows_per_shard=100,
                   vocab=tinygpt.vocab(), unembed=gpt.unembed, progress=False)
    assert m["complete"] and m["rows"] == 6 * 4 * 16 and m["sequences"] == 24
    for hook in ("blocks.0", "blocks.1.mlp"):
        want = np.concatenate([hand_capture(gpt, hook, b).reshape(-1, 32).numpy() for b in batches])
        np.testing.assert_array_equal(shards(tmp_path / "h", hook), want)
        h = next(h for h in m["hooks"] if h["name"] == hook)
        assert h["d_in"] == 32 and h["rows"] == 384 and len(h["shards"]) == 3  # 112 rows a shard: 2 inputs
    tokens = np.load(tmp_path / "h" / "tokens.npy")
    np.testing.assert_array_equal(tokens, torch.cat(batches).reshape(-1).numpy())
    pos = np.load(tmp_path / "h" / "positions.npy")
    np.testing.assert_array_equal(pos[:, 0], np.repeat(np.arange(24), 16))
    np.testing.assert_array_equal(pos[:, 1], np.tile(np.arange(16), 24))
    assert json.load(open(tmp_path / "h" / "vocab.json"))[65] == "A"
    np.testing.assert_array_equal(np.load(tmp_path / "h" / "unembed.npy"), gpt.unembed.detach().numpy())


def test_activations_equal_harvest(gpt, batches, tmp_path):
    st.harvest(gpt, "blocks.1", batches, tmp_path / "h", progress=False)
    rows = list(st.activations(gpt, "blocks.1", batches))
    assert [r.shape for r in rows] == [(64, 32)] * 6 and rows[0].dtype == np.float32
    np.testing.assert_array_equal(np.concatenate(rows), shards(tmp_path / "h", "blocks.1"))
    cut = np.concatenate(list(st.activations(gpt, "blocks.1", batches, max_rows=100)))
    np.testing.assert_array_equal(cut, np.concatenate(rows)[:100])
    # as a training source: straight from the model (two epochs: the model runs twice) = from the rows
    args = dict(architecture="topk", k=4, d_sae=64, optimizer="adam", batch_size=32, epochs=2, shuffle_buffer=128,
                threads=1, progress=False)
    a = sae.train(st.activations(gpt, "blocks.1", batches), tmp_path / "a", **args)
    b = sae.train(rows, tmp_path / "b", **args)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_max_rows_and_bfloat16(gpt, batches, tmp_path):
    m = st.harvest(gpt, "blocks.1", batches, tmp_path / "h", dtype="bfloat16", max_rows=150, progress=False)
    assert m["rows"] == 150 and len(np.load(tmp_path / "h" / "tokens.npy")) == 150
    raw = shards(tmp_path / "h", "blocks.1")
    assert raw.dtype == np.dtype("V2") and raw.shape == (150, 32)
    full = torch.cat([hand_capture(gpt, "blocks.1", b).reshape(-1, 32) for b in batches])[:150]
    want = full.to(torch.bfloat16).view(torch.int16).numpy()
    np.testing.assert_array_equal(raw.view(np.int16), want)
    # the engine reads the raw shards as those bfloat16 values: the same bits as float32 shards of them
    (tmp_path / "f32").mkdir()
    np.save(tmp_path / "f32" / "000000.npy", full.to(torch.bfloat16).float().numpy())
    args = dict(architecture="topk", k=4, d_sae=64, optimizer="adam", batch_size=32, epochs=2, shuffle_buffer=64,
                threads=1, progress=False)
    sae.train(str(tmp_path / "h" / "blocks.1" / "*.npy"), tmp_path / "a", data_dtype="bfloat16", **args)
    sae.train(str(tmp_path / "f32" / "*.npy"), tmp_path / "b", **args)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


class Interrupted(Exception):
    pass


def failing_after(items, n):
    for i, b in enumerate(items):
        if i == n:
            raise Interrupted()
        yield b


def test_resumed_harvest_equals_an_uninterrupted_one(gpt, batches, tmp_path):
    args = dict(rows_per_shard=100, progress=False)
    st.harvest(gpt, "blocks.1", batches, tmp_path / "once", **args)
    with pytest.raises(Interrupted):
        st.harvest(gpt, "blocks.1", failing_after(batches, 5), tmp_path / "twice", **args)
    m = st.read_manifest(tmp_path / "twice")
    assert not m["complete"] and m["inputs"] == 4 and m["rows"] == 256   # two shards of 2 inputs landed
    st.harvest(gpt, "blocks.1", batches, tmp_path / "twice", **args)
    for name in ["manifest.json", "tokens.npy", "positions.npy"] + st.read_manifest(tmp_path / "once")["hooks"][0]["shards"]:
        assert (tmp_path / "once" / name).read_bytes() == (tmp_path / "twice" / name).read_bytes(), name
    with pytest.raises(sae.Error, match="harvested with"):
        st.harvest(gpt, "blocks.1", batches, tmp_path / "once", rows_per_shard=7, progress=False)


def test_sae_train_streams_a_harvest(gpt, batches, tmp_path):
    st.harvest(gpt, "blocks.1", batches, tmp_path / "h", rows_per_shard=100, progress=False)
    x = shards(tmp_path / "h", "blocks.1")
    glob = str(tmp_path / "h" / "blocks.1" / "*.npy")
    a = sae.train(glob, tmp_path / "a", architecture="topk", k=4, d_sae=64, optimizer="adam", batch_size=32,
                  epochs=3, shuffle_buffer=256, threads=1, progress=False)
    assert a.evaluate(x)["fvu"] < 0.9
    cli("train", "--set", f"data={glob}", "--set", "architecture=topk", "--set", "k=4", "--set", "d_sae=64",
        "--set", "optimizer=adam", "--set", "batch_size=32", "--set", "epochs=3", "--set", "shuffle_buffer=256",
        "--set", "threads=1", "--out", tmp_path / "c")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "c" / "model.safetensors").read_bytes()


# ---- splice / evaluate ---------------------------------------------------------------------------

def hand_ce(logits, ids):
    lp = torch.log_softmax(logits.double(), -1)[:, :-1]
    return -lp.gather(-1, ids[:, 1:, None]).mean().item()


def test_splice_exact_and_zero(gpt, batches, tmp_path):
    ident, zero = identity_sae(tmp_path, 32), zero_sae(tmp_path, 32)
    ids = batches[0]
    with torch.no_grad():
        clean = gpt(ids)
        with st.splice(gpt, "blocks.0", ident):
            same = gpt(ids)
        with st.splice(gpt, "blocks.0", zero):
            zeroed = gpt(ids)
        h = gpt.blocks[0].register_forward_hook(lambda m, i, o: torch.zeros_like(o))
        want_zero = gpt(ids)
        h.remove()
    torch.testing.assert_close(same, clean, rtol=0, atol=0)
    torch.testing.assert_close(zeroed, want_zero, rtol=0, atol=0)
    r = st.evaluate(gpt, "blocks.0", ident, batches)
    assert r["ce_spliced"] == r["ce_clean"] and r["kl"] == 0 and r["loss_recovered"] == 1
    assert r["fvu"] == pytest.approx(0, abs=1e-12)
    z = st.evaluate(gpt, "blocks.0", zero, batches)
    assert z["ce_spliced"] == z["ce_zero"] and z["loss_recovered"] == 0


def test_evaluate_against_a_hand_computation(gpt, batches, tmp_path):
    x = np.concatenate(list(st.activations(gpt, "blocks.1", batches)))
    m = sae.train(x, tmp_path / "topk", architecture="topk", k=4, d_sae=64, optimizer="adam", batch_size=32,
                  epochs=3, threads=1, progress=False)
    r = st.evaluate(gpt, "blocks.1", m, batches)
    t = m.to_torch()
    ce = dict(clean=[], spliced=[], zero=[])
    kl, n = 0.0, 0
    with torch.no_grad():
        for ids in batches:
            clean = gpt(ids)
            h = gpt.blocks[1].register_forward_hook(lambda mod, i, o: t(o.reshape(-1, 32)).reshape(o.shape))
            spliced = gpt(ids)
            h.remove()
            h = gpt.blocks[1].register_forward_hook(lambda mod, i, o: o * 0)
            zero = gpt(ids)
            h.remove()
            for k, v in (("clean", clean), ("spliced", spliced), ("zero", zero)):
                ce[k].append(hand_ce(v, ids))
            p, q = torch.softmax(clean.double(), -1), torch.softmax(spliced.double(), -1)
            kl += (p * (p.log() - q.log())).sum().item()
            n += p.shape[0] * p.shape[1]
    want = {k: float(np.mean(v)) for k, v in ce.items()}      # every batch has the same token count
    assert r["ce_clean"] == pytest.approx(want["clean"], rel=1e-9)
    assert r["ce_spliced"] == pytest.approx(want["spliced"], rel=1e-5)   # x̂: engine vs to_torch, fp32
    assert r["ce_zero"] == pytest.approx(want["zero"], rel=1e-9)
    assert len({r["ce_clean"], r["ce_spliced"], r["ce_zero"]}) == 3
    rec = (want["zero"] - want["spliced"]) / (want["zero"] - want["clean"])
    assert r["loss_recovered"] == pytest.approx(rec, rel=1e-4)
    assert r["kl"] == pytest.approx(kl / n, rel=1e-3) and r["kl"] > 0
    assert r["tokens"] == 6 * 4 * 15
    ev = m.evaluate(x)
    for k in ("fvu", "explained_variance", "l0", "dead_fraction"):
        assert r[k] == ev[k], k
    assert "density_log10_hist" in r


def test_unspliced_after_an_exception(gpt, batches, tmp_path):
    zero = zero_sae(tmp_path, 32)
    ids = batches[0]
    with torch.no_grad():
        clean = gpt(ids)
        with pytest.raises(RuntimeError, match="inside"):
            with st.splice(gpt, "blocks.1", zero):
                gpt(ids)
                raise RuntimeError("inside the block")
        after = gpt(ids)
    torch.testing.assert_close(after, clean, rtol=0, atol=0)
    assert all(not mod._forward_hooks for mod in gpt.modules())


def test_error_term_gives_the_clean_output(gpt, batches, tmp_path):
    zero = zero_sae(tmp_path, 32)
    ids = batches[0]
    with torch.no_grad():
        clean = gpt(ids)
        with st.splice(gpt, "blocks.1", zero, error_term=True):
            out = gpt(ids)
    torch.testing.assert_close(out, clean, rtol=0, atol=0)   # 0 + (x − 0) = x exactly


# ---- the shapes of other people's models (Hugging Face style) ------------------------------------

class Output:
    def __init__(self, logits):
        self.logits = logits


class TupleBlock(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x), "cache"


class HFStyle(torch.nn.Module):
    """forward(input_ids=...) → an object with .logits; a block whose output is a tuple."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt
        self.layer = TupleBlock(gpt.blocks[0])

    def forward(self, input_ids):
        x = self.gpt.embed(input_ids)
        x, _ = self.layer(x)
        x = self.gpt.blocks[1](x)
        return Output(self.gpt.ln_f(x) @ self.gpt.unembed)


def test_dict_inputs_tuple_outputs_and_logits_attribute(gpt, batches, tmp_path):
    hf = HFStyle(gpt).eval()
    inputs = [{"input_ids": b} for b in batches]
    st.harvest(hf, "layer", inputs, tmp_path / "h", progress=False)
    want = np.concatenate([hand_capture(gpt, "blocks.0", b).reshape(-1, 32).numpy() for b in batches])
    np.testing.assert_array_equal(shards(tmp_path / "h", "layer"), want)
    np.testing.assert_array_equal(np.load(tmp_path / "h" / "tokens.npy"), torch.cat(batches).reshape(-1).numpy())
    r = st.evaluate(hf, "layer", identity_sae(tmp_path, 32), inputs)
    assert r["ce_spliced"] == r["ce_clean"] and r["ce_zero"] > r["ce_clean"]
    g = st.evaluate(gpt, "blocks.0", identity_sae(tmp_path, 32), batches)
    assert r["ce_clean"] == pytest.approx(g["ce_clean"], rel=1e-12)


def test_loss_fn(gpt, batches, tmp_path):
    calls = []

    def loss_fn(out, ids):
        calls.append(1)
        return torch.nn.functional.cross_entropy(out[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1))

    r = st.evaluate(gpt, "blocks.0", identity_sae(tmp_path, 32), batches, loss_fn=loss_fn)
    d = st.evaluate(gpt, "blocks.0", identity_sae(tmp_path, 32), batches)
    assert len(calls) == 3 * len(batches) and r["tokens"] == len(batches)
    assert r["ce_clean"] == pytest.approx(d["ce_clean"], rel=1e-5)


# ---- bad input ----------------------------------------------------------------------------------

def test_unknown_hook_names_the_nearest(gpt, batches, tmp_path):
    for call in (lambda: st.harvest(gpt, "block.1", batches, tmp_path / "h"),
                 lambda: list(st.activations(gpt, "block.1", batches)),
                 lambda: st.splice(gpt, "block.1", zero_sae(tmp_path, 32)).__enter__(),
                 lambda: st.evaluate(gpt, "block.1", zero_sae(tmp_path, 32), batches)):
        with pytest.raises(st.HookError, match=r"hook 'block.1': TinyGPT has no module of that name .*'blocks.1'"):
            call()
    assert issubclass(st.HookError, LookupError) and issubclass(st.HookError, sae.Error)


def test_width_mismatch_names_both_numbers(gpt, batches, tmp_path):
    small = sae_with(tmp_path, "w16", 16, np.eye(16, dtype=np.float32), np.eye(16, dtype=np.float32))
    with pytest.raises(st.WidthError, match="width 32, but the SAE's d_in is 16"):
        with st.splice(gpt, "blocks.1", small):
            gpt(batches[0])
    with pytest.raises(st.WidthError, match="width 32, but the SAE's d_in is 16"):
        st.evaluate(gpt, "blocks.1", small, batches)
    assert all(not mod._forward_hooks for mod in gpt.modules())


def test_no_logits_and_no_loss_fn(gpt, batches, tmp_path):
    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gpt = gpt

        def forward(self, ids):
            return {"hidden": self.gpt.blocks[0](self.gpt.embed(ids))}

    with pytest.raises(st.LossError, match="pass loss_fn="):
        st.evaluate(Hidden(), "gpt.blocks.0", identity_sae(tmp_path, 32), batches)

    class FromEmbeddings(torch.nn.Module):   # logits, but its inputs are vectors, not token ids
        def __init__(self):
            super().__init__()
            self.gpt = gpt

        def forward(self, x):
            return self.gpt.ln_f(self.gpt.blocks[1](self.gpt.blocks[0](x))) @ self.gpt.unembed

    with pytest.raises(st.LossError, match="no token ids"):
        st.evaluate(FromEmbeddings(), "gpt.blocks.0", identity_sae(tmp_path, 32), [torch.zeros(2, 16, 32)])


def test_bad_arguments(gpt, batches, tmp_path):
    with pytest.raises(sae.DTypeError, match="float32"):
        st.harvest(gpt, "blocks.1", batches, tmp_path / "h", dtype="float16")
    with pytest.raises(sae.Error, match="rows_per_shard"):
        st.harvest(gpt, "blocks.1", batches, tmp_path / "h", rows_per_shard=0)
    with pytest.raises(sae.Error, match="no rows"):
        st.harvest(gpt, "blocks.1", [], tmp_path / "empty", progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(sae.Error, match="not valid JSON"):
        st.read_manifest(tmp_path / "bad")
    with pytest.raises(sae.DTypeError, match="sae.Model"):
        st.splice(gpt, "blocks.1", "model").__enter__()
