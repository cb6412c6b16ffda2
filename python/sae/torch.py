"""sae.torch: the model in the loop. Take activations out of a PyTorch model, train on them,
splice the SAE back and measure what it costs (docs/python.md, "The model in the loop").

    import sae, sae.torch
    sae.torch.harvest(model, ["blocks.1"], batches, "acts/")          # .npy shards + manifest.json
    m = sae.train("acts/blocks.1/*.npy", "runs/topk", architecture="topk", k=16, d_sae=1024)
    with sae.torch.splice(model, "blocks.1", m):
        logits = model(ids)                                            # blocks.1's output = the SAE's x̂
    sae.torch.evaluate(model, "blocks.1", m, batches)                  # ce_clean, ce_spliced, loss_recovered, ...

Any torch.nn.Module works, Hugging Face models included: a hook point is a name from
`model.named_modules()` (its output is captured; a tuple output contributes its first element),
and each item of `inputs` is what the model takes: a tensor (model(x)), a tuple or list
(model(*x)) or a dict (model(**x), e.g. a tokenizer's output with `input_ids`). The SAE's work
(encoding, reconstruction, metrics) is the engine's, as `sae encode` / `sae eval` do it.
"""
import contextlib
import difflib
import json
import os
import sys

import numpy as np
import torch

from . import Error, DTypeError, Model

__all__ = ["HookError", "WidthError", "LossError", "harvest", "activations", "splice", "evaluate",
           "read_manifest"]

MANIFEST = "manifest.json"


class HookError(Error, LookupError):
    """A hook name that is not one of the model's `named_modules()` (also a LookupError)."""


class WidthError(Error):
    """An SAE whose d_in is not the width of the hook point's output."""


class LossError(Error, TypeError):
    """The model's output has no logits and no loss_fn was given (also a TypeError)."""


# ---- hooks --------------------------------------------------------------------------------

def _module(model, hook):
    """The submodule named `hook`, or HookError naming the nearest names."""
    names = dict(model.named_modules())
    if hook in names and hook != "":
        return names[hook]
    choices = [n for n in names if n]
    near = difflib.get_close_matches(str(hook), choices, n=3, cutoff=0.5)
    hint = (f"did you mean {', '.join(repr(n) for n in near)}?" if near else
            f"its modules include {', '.join(repr(n) for n in choices[:6])}")
    raise HookError(f"hook {hook!r}: {type(model).__name__} has no module of that name "
                    f"(names as model.named_modules() gives them); {hint}")


def _first(out):
    """A hook point's activation tensor: the output, or its first element when it is a tuple."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _replace_first(out, x):
    return (x, *out[1:]) if isinstance(out, tuple) else [x, *out[1:]] if isinstance(out, list) else x


def _call(model, inp):
    if isinstance(inp, dict):
        return model(**inp)
    if isinstance(inp, (tuple, list)):
        return model(*inp)
    return model(inp)


def _ids(inp):
    """The token ids [B, T] in an input, when it has them (an integer tensor first or input_ids)."""
    t = inp.get("input_ids") if isinstance(inp, dict) else inp[0] if isinstance(inp, (tuple, list)) and inp else inp
    if isinstance(t, torch.Tensor) and t.dim() == 2 and not t.is_floating_point() and not t.is_complex():
        return t
    return None


@contextlib.contextmanager
def _hooked(model, hook, fn):
    """fn(output) → replacement or None, as a forward hook on the module `hook`, removed on exit."""
    handle = _module(model, hook).register_forward_hook(lambda _m, _i, out: fn(out))
    try:
        yield
    finally:
        handle.remove()


def _run(model, hooks, inp):
    """(model output, {hook: captured output [..., d] detached})."""
    got = {}

    def grab(name):
        def fn(out):
            got[name] = _first(out).detach()
        return fn

    with contextlib.ExitStack() as stack:
        for h in hooks:
            stack.enter_context(_hooked(model, h, grab(h)))
        out = _call(model, inp)
    missing = [h for h in hooks if h not in got]
    if missing:
        raise HookError(f"hook {missing[0]!r}: the module exists but did not run during the forward pass")
    return out, got


def _rows(t):
    """[..., d] → float32 NumPy rows [N, d] (a copy on the CPU)."""
    return t.reshape(-1, t.shape[-1]).float().cpu().numpy()


def _hook_list(hooks):
    hooks = [hooks] if isinstance(hooks, str) else list(hooks)
    if not hooks:
        raise Error("hooks: give at least one hook name")
    if len(set(hooks)) != len(hooks):
        raise Error(f"hooks: {hooks} names a hook twice")
    return hooks


# ---- harvest ------------------------------------------------------------------------------

def _atomic_bytes(path, write):
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_npy(path, a):
    _atomic_bytes(path, lambda f: np.save(f, a, allow_pickle=False))


def _save_json(path, obj):
    _atomic_bytes(path, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode()))


def read_manifest(path):
    """The manifest.json of a harvest directory (docs/formats.md, "Harvested activations")."""
    p = os.path.join(os.fspath(path), MANIFEST)
    try:
        with open(p) as f:
            m = json.load(f)
    except FileNotFoundError:
        raise Error(f"{p}: no such file; is {os.fspath(path)!r} a directory sae.torch.harvest wrote?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise Error(f"{p}: not valid JSON ({e}); delete the directory and harvest again") from None
    if not isinstance(m, dict) or m.get("format") != "sae-harvest":
        raise Error(f"{p}: not a harvest manifest (no \"format\": \"sae-harvest\")")
    return m


def _to_storage(t, dtype):
    """Rows [N, d] as NumPy in the shard dtype: float32 '<f4' or bfloat16 as raw '<V2'."""
    t = t.reshape(-1, t.shape[-1])
    if dtype == "float32":
        return t.float().cpu().numpy()
    return t.to(torch.bfloat16).cpu().view(torch.int16).numpy().view(np.dtype("V2"))


def harvest(model, hooks, inputs, out, *, dtype="float32", max_rows=None, rows_per_shard=65536,
            vocab=None, unembed=None, model_name=None, progress=None):
    """Runs `model` over `inputs` under torch.no_grad() and writes each hook point's output, as
    rows of its last dimension, into .npy shards that `sae train` streams.

    hooks: a name or a list of names from model.named_modules(); all are captured in one pass
      and must give the same number of rows per input.
    inputs: an iterable of model inputs (tensor, tuple/list of arguments, or dict of keyword
      arguments). When an input holds token ids [B, T] (an integer tensor, or "input_ids") and a
      hook gives [B, T, d], the manifest records the token and (sequence, position) of each row.
    out: the directory: manifest.json, <hook>/NNNNNN.npy, tokens.npy, positions.npy, and
      vocab.json / unembed.npy when given (vocab: token id → text; unembed [d_model, V]) — what
      the feature browser of `sae report --harvest` reads; tokens/NNNNNN.npy [rows, 3] (token or
      -1, sequence, position) is the index per shard that a resumed harvest continues from.
    dtype: "float32" or "bfloat16" (saved as raw '<V2'; train with data_dtype="bfloat16").
    max_rows: stop after this many rows (the last input's rows cut there).
    rows_per_shard: a shard is written once this many rows are buffered (whole inputs, so a shard
      may hold a little more).

    Resumable: the manifest is rewritten (atomically) after each shard, with the number of inputs
    consumed; calling harvest again with the same arguments skips those inputs (they are iterated,
    not run) and continues, giving the files an uninterrupted harvest gives. A complete harvest is
    returned as it is. Returns the manifest (a dict)."""
    hooks = _hook_list(hooks)
    if dtype not in ("float32", "bfloat16"):
        raise DTypeError(f"dtype {dtype!r}: harvest writes \"float32\" or \"bfloat16\"")
    if int(rows_per_shard) < 1:
        raise Error(f"rows_per_shard = {rows_per_shard}: must be at least 1")
    if max_rows is not None and int(max_rows) < 1:
        raise Error(f"max_rows = {max_rows}: must be at least 1 (or None for all)")
    for h in hooks:
        _module(model, h)
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    settings = dict(hooks=hooks, dtype=dtype, rows_per_shard=int(rows_per_shard),
                    max_rows=None if max_rows is None else int(max_rows))
    if os.path.exists(os.path.join(out, MANIFEST)):
        m = read_manifest(out)
        if m.get("settings") != settings:
            raise Error(f"{os.path.join(out, MANIFEST)}: harvested with {m.get('settings')}, not {settings}; "
                        "use another directory or the same arguments")
        if m["complete"]:
            return m
    else:
        m = dict(format="sae-harvest", version=1, model=model_name or type(model).__name__, complete=False,
                 settings=settings, inputs=0, sequences=0, rows=0,
                 hooks=[dict(name=h, dir=_dirname(h), d_in=None, rows=0, dtype=dtype, shards=[]) for h in hooks],
                 token_shards=[])
    for h in m["hooks"]:
        os.makedirs(os.path.join(out, h["dir"]), exist_ok=True)
    os.makedirs(os.path.join(out, "tokens"), exist_ok=True)
    if vocab is not None:
        m["vocab"] = "vocab.json"
        _save_json(os.path.join(out, "vocab.json"), [str(v) for v in vocab])
    if unembed is not None:
        m["unembed"] = "unembed.npy"
        _save_npy(os.path.join(out, "unembed.npy"),
                  np.ascontiguousarray(torch.as_tensor(unembed).detach().float().cpu().numpy()))

    skip = m["inputs"]
    buf = {h: [] for h in hooks}
    tok_buf, pos_buf = [], []
    buffered = 0
    seq = m["sequences"]
    consumed = m["inputs"]
    rows = m["rows"]
    bar = _bar(progress, max_rows, rows)

    def flush():
        nonlocal buffered
        if buffered == 0:
            return
        idx = len(m["token_shards"])
        for h in m["hooks"]:
            a = np.concatenate(buf[h["name"]])
            rel = f"{h['dir']}/{idx:06d}.npy"
            _save_npy(os.path.join(out, rel), a)
            h["shards"].append(rel)
            h["rows"] += a.shape[0]
            buf[h["name"]].clear()
        rel = f"tokens/{idx:06d}.npy"
        has_tokens = all(t is not None for t in tok_buf)
        tokens = np.concatenate(tok_buf) if has_tokens else np.full(buffered, -1, np.int32)
        pos = np.concatenate(pos_buf)
        _save_npy(os.path.join(out, rel), np.stack([tokens, pos[:, 0], pos[:, 1]], 1).astype(np.int32))
        m["token_shards"].append(rel)
        m.setdefault("has_tokens", True)
        m["has_tokens"] = bool(m["has_tokens"] and has_tokens)
        tok_buf.clear()
        pos_buf.clear()
        m["inputs"], m["sequences"], m["rows"] = consumed, seq, rows
        buffered = 0
        _save_json(os.path.join(out, MANIFEST), m)

    with torch.no_grad():
        for i, inp in enumerate(inputs):
            if i < skip:
                continue
            if max_rows is not None and rows >= max_rows:
                break
            _, got = _run(model, hooks, inp)
            counts = {h: got[h].reshape(-1, got[h].shape[-1]).shape[0] for h in hooks}
            if len(set(counts.values())) != 1:
                raise Error(f"harvest: hooks give different numbers of rows per input ({counts}); "
                            "harvest them in separate calls")
            n = counts[hooks[0]]
            take = n if max_rows is None else min(n, max_rows - rows)
            first = got[hooks[0]]
            ids = _ids(inp)
            lead = tuple(first.shape[:-1])
            B = lead[0] if lead else 1                          # sequences in this input
            per = max(n // max(B, 1), 1)                        # rows per sequence ([B, T, d]: T)
            r = np.arange(n)
            pos = np.stack([seq + r // per, r % per], 1)        # (sequence, position) of each row
            tok = ids.reshape(-1).cpu().numpy() if ids is not None and tuple(ids.shape) == lead else None
            for h in m["hooks"]:
                t = got[h["name"]]
                if h["d_in"] is None:
                    h["d_in"] = int(t.shape[-1])
                buf[h["name"]].append(_to_storage(t, dtype)[:take])
            pos_buf.append(pos[:take].astype(np.int32))
            tok_buf.append(None if tok is None else tok[:take].astype(np.int32))
            buffered += take
            rows += take
            seq += B
            consumed = i + 1
            if bar:
                bar.update(take)
            if buffered >= rows_per_shard:
                flush()
    flush()
    if bar:
        bar.close()
    if rows == 0:
        raise Error("harvest: inputs gave no rows (an empty iterable?)")
    # The combined index: tokens.npy [rows] and positions.npy [rows, 2], in row order.
    parts = [np.load(os.path.join(out, p)) for p in m["token_shards"]]
    both = np.concatenate(parts)
    if m.get("has_tokens"):
        m["tokens"] = "tokens.npy"
        _save_npy(os.path.join(out, "tokens.npy"), both[:, 0].astype(np.int32))
    m["positions"] = "positions.npy"
    _save_npy(os.path.join(out, "positions.npy"), both[:, 1:].astype(np.int32))
    m["complete"] = True
    _save_json(os.path.join(out, MANIFEST), m)
    return m


def _dirname(hook):
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in hook) or "hook"


def _bar(progress, total, initial):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="row", unit_scale=True, dynamic_ncols=True)


class _Activations:
    """Re-iterable when `inputs` is (a list, a DataLoader): each pass runs the model again."""

    def __init__(self, model, hook, inputs, max_rows):
        _module(model, hook)
        self.model, self.hook, self.inputs, self.max_rows = model, hook, inputs, max_rows

    def __iter__(self):
        rows = 0
        with torch.no_grad():
            for inp in self.inputs:
                if self.max_rows is not None and rows >= self.max_rows:
                    return
                _, got = _run(self.model, [self.hook], inp)
                a = _rows(got[self.hook])
                if self.max_rows is not None:
                    a = a[: self.max_rows - rows]
                rows += a.shape[0]
                yield a


def activations(model, hook, inputs, *, max_rows=None):
    """The rows harvest would write for one hook, as float32 NumPy batches [rows, d] (one per
    input), so sae.train can train straight from the model without disk:
        sae.train(sae.torch.activations(model, "blocks.1", batches), shuffle_buffer=65536, ...)
    Iterating it again runs the model again, so with a re-iterable `inputs` (a list, a
    DataLoader) training runs for every epoch; with a generator, once."""
    return _Activations(model, hook, inputs, max_rows)


# ---- splice -------------------------------------------------------------------------------

def _reconstructor(sae_model, hook):
    """x [N, d] (torch) → x̂ [N, d] float32 torch, by the engine (sae.Model) or a torch module."""
    if isinstance(sae_model, Model):
        norm = sae_model.cfg.get("normalize", "none")
        if norm != "none":
            raise Error(f"splice: the SAE was trained with normalize = {norm!r}, so its reconstructions are in "
                        "that normalised space, not the hook's; train on activations with normalize=\"none\"")
        d_in = sae_model.d_in

        def rec(x):
            return torch.from_numpy(sae_model.reconstruct(np.ascontiguousarray(_rows(x))))
    elif isinstance(sae_model, torch.nn.Module):
        d_in = getattr(sae_model, "W_dec").shape[1] if hasattr(sae_model, "W_dec") else None

        def rec(x):
            return sae_model(x.reshape(-1, x.shape[-1]).float())
    else:
        raise DTypeError(f"sae_model: a {type(sae_model).__name__}; give an sae.Model (sae.load, sae.train) "
                         "or its to_torch() module")

    def check(x):
        if d_in is not None and x.shape[-1] != d_in:
            raise WidthError(f"hook {hook!r} gives rows of width {x.shape[-1]}, but the SAE's d_in is {d_in}; "
                             "use an SAE trained on this hook")
    return rec, check


@contextlib.contextmanager
def splice(model, hook, sae_model, *, error_term=False):
    """Within the block, the output of `hook` is replaced by the SAE's reconstruction x̂ (the
    first element when the output is a tuple), in the output's dtype and device. error_term: the
    output is x̂ + (x − x̂), equal to x up to rounding, with gradients flowing to x as if the SAE
    were not there (the field's "SAE error term"). The hook is removed on exit, also after an
    exception."""
    rec, check = _reconstructor(sae_model, hook)

    def fn(out):
        x = _first(out)
        check(x)
        xh = rec(x).reshape(x.shape).to(dtype=x.dtype, device=x.device)
        if error_term:
            xh = xh.detach() + (x - xh.detach())
        return _replace_first(out, xh)

    with _hooked(model, hook, fn):
        yield model


@contextlib.contextmanager
def _zeroed(model, hook):
    with _hooked(model, hook, lambda out: _replace_first(out, torch.zeros_like(_first(out)))):
        yield


# ---- evaluate -----------------------------------------------------------------------------

def _logits(out):
    if isinstance(out, torch.Tensor) and out.dim() == 3:
        return out
    lg = getattr(out, "logits", None)
    if isinstance(lg, torch.Tensor) and lg.dim() == 3:
        return lg
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    return None


def _next_token_ce(logits, ids):
    """(sum of next-token cross-entropies, count): logits[:, t] predicts ids[:, t + 1]."""
    lg = logits[:, :-1].reshape(-1, logits.shape[-1]).double()
    return torch.nn.functional.cross_entropy(lg, ids[:, 1:].reshape(-1), reduction="sum").item(), lg.shape[0]


def evaluate(model, hook, sae_model, inputs, *, loss_fn=None, max_rows=None):
    """The field's measures of an SAE inside its model, over `inputs`:
      ce_clean, ce_spliced, ce_zero — the loss as the model is, with `hook`'s output replaced by the
        SAE's reconstruction, and with it zero-ablated (mean next-token cross-entropy per predicted
        token, nats, from logits [B, T, V] or an output's .logits against the input ids; or, with
        loss_fn(output, input) → scalar, its mean over inputs);
      loss_recovered = (ce_zero − ce_spliced) / (ce_zero − ce_clean);
      kl — KL(clean ‖ spliced) of the next-token distributions, mean per token (with logits);
      tokens — the number of predicted tokens (or inputs, with loss_fn);
      and the engine's metrics of the SAE on the hook's activations (as Model.evaluate / `sae eval`):
        fvu, explained_variance, l0, dead_fraction, cossim, l2_ratio, density_log10_hist, ...
    max_rows: keep at most this many hook rows for the activation metrics (all by default)."""
    _module(model, hook)
    if not isinstance(sae_model, Model):
        raise DTypeError(f"sae_model: a {type(sae_model).__name__}; evaluate takes an sae.Model")
    sums = dict(clean=0.0, spliced=0.0, zero=0.0, kl=0.0)
    count = kl_count = 0
    have_kl = True
    kept, kept_rows = [], 0
    with torch.no_grad():
        for inp in inputs:
            clean, got = _run(model, [hook], inp)
            x = got[hook]
            with splice(model, hook, sae_model):
                spliced = _call(model, inp)
            with _zeroed(model, hook):
                zero = _call(model, inp)
            if loss_fn is None:
                lc = _logits(clean)
                ids = _ids(inp)
                if lc is None:
                    raise LossError(f"evaluate: the model's output is a {type(clean).__name__}, not logits [B, T, V] "
                                    "or an object with .logits; pass loss_fn=lambda output, inp: <mean loss> "
                                    "(a scalar tensor or float)")
                if ids is None or tuple(ids.shape) != tuple(lc.shape[:2]):
                    raise LossError("evaluate: the inputs hold no token ids [B, T] matching the logits (an integer "
                                    "tensor, first argument or input_ids) for next-token cross-entropy; pass loss_fn")
                for key, o in (("clean", lc), ("spliced", _logits(spliced)), ("zero", _logits(zero))):
                    s, c = _next_token_ce(o, ids)
                    sums[key] += s
                count += c
            else:
                for key, o in (("clean", clean), ("spliced", spliced), ("zero", zero)):
                    sums[key] += float(loss_fn(o, inp))
                count += 1
            lc, ls = _logits(clean), _logits(spliced)
            if lc is not None and ls is not None:
                pc = lc.double().log_softmax(-1)
                ps = ls.double().log_softmax(-1)
                sums["kl"] += (pc.exp() * (pc - ps)).sum().item()
                kl_count += pc[..., 0].numel()
            else:
                have_kl = False
            if max_rows is None or kept_rows < max_rows:
                r = _rows(x)
                if max_rows is not None:
                    r = r[: max_rows - kept_rows]
                kept.append(r)
                kept_rows += r.shape[0]
    if count == 0:
        raise Error("evaluate: inputs gave no batches (an empty iterable?)")
    ce = {k: sums[k] / count for k in ("clean", "spliced", "zero")}
    gap = ce["zero"] - ce["clean"]
    result = dict(ce_clean=ce["clean"], ce_spliced=ce["spliced"], ce_zero=ce["zero"],
                  loss_recovered=(ce["zero"] - ce["spliced"]) / gap if gap != 0 else float("nan"),
                  kl=sums["kl"] / kl_count if have_kl and kl_count else float("nan"),
                  tokens=count)
    metrics = sae_model.evaluate(np.concatenate(kept))
    for k, v in metrics.items():
        result.setdefault(k, v)
    return result
