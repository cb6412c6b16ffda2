"""sae: sparse autoencoders from Python, a thin skin over libsae (docs/python.md).

Every number comes from the same C++ calls the `sae` command makes: the same settings (the
CLI's keys, validated by the same option table), the same files, the same bits.

    import sae
    model = sae.train(x, "runs/py", architecture="topk", k=32, d_sae=4096, optimizer="adam")
    h = model.encode(x)                      # NumPy in, NumPy out; torch in, torch out
    model = sae.load("runs/py")              # a directory written by `sae train` or Model.save
"""
import json
import os
import sys
import tempfile
import warnings

import numpy as np

from . import _sae

__version__ = "0.1.0"

__all__ = ["Error", "DTypeError", "Model", "train", "load", "synth", "mmcs", "gradcheck", "report",
           "settings_help"]

Error = _sae.Error
Error.__module__ = "sae"
Error.__doc__ = ("The engine's one-line message (the text `sae` prints after 'sae: error:'). "
                 "A subclass of ValueError.")


class DTypeError(Error, TypeError):
    """An argument of a type or dtype sae does not take (also a TypeError)."""


# ---- arrays in, arrays out ----------------------------------------------------------------

_SOURCES = {("f", 4): "f32", ("f", 8): "f64", ("f", 2): "f16", ("u", 1): "u8"}


def _torch():
    return sys.modules.get("torch")


def _is_tensor(x):
    t = _torch()
    return t is not None and isinstance(x, t.Tensor)


def _as_numpy(x, name):
    """(NumPy array, source type or None, 'numpy' | 'torch'); tensors viewed without a copy."""
    if _is_tensor(x):
        t = _torch()
        if x.device.type != "cpu":
            raise Error(f"{name}: a tensor on {x.device}; sae computes on the CPU, pass {name}.cpu()")
        x = x.detach()
        if x.dtype == t.bfloat16:
            return x.float().numpy(), "bf16", "torch"
        if x.dtype not in (t.float32, t.float64, t.float16, t.uint8):
            raise DTypeError(f"{name}: dtype {x.dtype} is not supported; give float32 (read in place), "
                             "float64, float16, bfloat16 or uint8")
        return x.numpy(), None, "torch"
    if isinstance(x, np.ndarray):
        return x, None, "numpy"
    raise DTypeError(f"{name}: a {type(x).__name__} is not an array; give a NumPy array or a torch tensor [N, d]")


def _rows(x, name):
    """x as a C-contiguous float32 [N, d] array (the input itself when it already is one), the
    element type it was converted from (which only legacy uint8 models care about) and its kind.
    More than two axes are flattened into features, as the CLI reads a file."""
    a, source, kind = _as_numpy(x, name)
    if source is None:
        source = _SOURCES.get((a.dtype.kind, a.dtype.itemsize))
        if source is None:
            raise DTypeError(f"{name}: dtype {a.dtype} is not supported; give float32 (read in place), "
                             "float64, float16 or uint8")
    if a.ndim < 2:
        raise Error(f"{name}: a {a.ndim}-d array of shape {a.shape}; give a 2-d array [N, d] "
                    f"({name}[None, :] for a single sample)")
    if a.ndim > 2:
        a = a.reshape(a.shape[0], -1)
    if a.dtype != np.float32:  # float64 rounded, float16 and uint8 exact: as the .npy reader does
        a = a.astype(np.float32)
    # Strided or Fortran-order views, and other byte orders, are copied once.
    return np.ascontiguousarray(a, dtype=np.float32), source, kind


def _codes(h, name):
    a, _, kind = _as_numpy(h, name)
    if a.dtype.kind not in "fu":
        raise DTypeError(f"{name}: dtype {a.dtype} is not supported; give float32 codes")
    if a.ndim != 2:
        raise Error(f"{name}: a {a.ndim}-d array of shape {a.shape}; give a 2-d array [N, d_sae]")
    return np.ascontiguousarray(a, dtype=np.float32), kind


def _like(a, kind):
    return _torch().from_numpy(a) if kind == "torch" else a


# ---- settings -----------------------------------------------------------------------------

def _setting_text(key, v):
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, str):
        return v
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, (list, tuple)) and all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) for e in v):
        return ",".join(str(int(e)) for e in v)
    raise DTypeError(f"setting '{key}': a {type(v).__name__} is not a setting value; give a number, "
                     "a string, a bool or a list of integers (sae.settings_help() lists the keys)")


def _settings(settings):
    return [(k, _setting_text(k, v)) for k, v in settings.items()]


def settings_help():
    """The settings, their defaults, ranges and meaning (the text of `sae train --help`)."""
    return _sae.config_help()


# ---- the model ----------------------------------------------------------------------------

class Model:
    """A trained sparse autoencoder (see docs/formats.md for what it computes).

    encode/decode/reconstruct/evaluate take NumPy arrays or CPU torch tensors [N, d] of any
    batch size and return the kind they were given. A C-contiguous float32 input is read in
    place; other dtypes and layouts are converted once."""

    def __init__(self, core, summary=None):
        self._m = core
        self.summary = summary  # sae.train's summary (steps, J terms, seconds, stop_reason, ...)

    @property
    def d_in(self):
        return self._m.d_in

    @property
    def d_sae(self):
        return self._m.d_sae

    @property
    def architecture(self):
        return self._m.architecture

    @property
    def cfg(self):
        """cfg.json as a dict: every setting, plus d_in, d_sae, architecture, normalize_stats, ..."""
        return json.loads(self._m.cfg_json())

    @property
    def tensors(self):
        """The saved tensors by name (W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec,
        threshold), as float32 NumPy arrays (copies)."""
        return self._m.tensors()

    def encode(self, x):
        """Hidden activations [N, d_sae] of x [N, d_in] (normalised as the model saved)."""
        a, source, kind = _rows(x, "x")
        return _like(self._m.encode(a, source, "x"), kind)

    def decode(self, h):
        """Reconstructions [N, d_in] from hidden activations h [N, d_sae]."""
        a, kind = _codes(h, "h")
        return _like(self._m.decode(a, "h"), kind)

    def reconstruct(self, x):
        """The model's reconstruction of x [N, d_in] (in the normalised input space)."""
        a, source, kind = _rows(x, "x")
        return _like(self._m.reconstruct(a, source, "x"), kind)

    def evaluate(self, x, ground_truth=None):
        """The metrics of `sae eval` over x, as a dict with its keys (J_total, mse, fvu, l0, ...);
        with ground_truth features [G, d_in] also mmcs, mmcs_min, ... as `--ground-truth` gives."""
        a, source, _ = _rows(x, "x")
        g = None if ground_truth is None else _rows(ground_truth, "ground_truth")[0]
        return self._m.evaluate(a, source, "x", g)

    def save(self, path):
        """Writes model.safetensors and cfg.json into the directory path (created if needed)."""
        self._m.save(os.fspath(path))

    def to_torch(self):
        """A torch.nn.Module with encode, decode and forward (x → reconstruction), computing what
        docs/formats.md states, from copies of the tensors."""
        from ._nn import module_from
        return module_from(self.cfg, self.tensors)

    def __repr__(self):
        return f"sae.Model(architecture={self.architecture!r}, d_in={self.d_in}, d_sae={self.d_sae})"


def load(path):
    """A model directory written by `sae train` or Model.save."""
    return Model(_sae.Model(os.fspath(path)))


# ---- training -----------------------------------------------------------------------------

class _Feeder:
    """An iterable of 2-d batches, read one at a time by the trainer (with the GIL)."""

    def __init__(self, iterable, name):
        self._iterable = iterable
        self._it = iter(iterable)
        self.restartable = self._it is not iterable  # iterators and generators return themselves
        self._name = name
        self._count = 0

    def next(self):
        while True:
            try:
                b = next(self._it)
            except StopIteration:
                return None
            a, _, _ = _rows(b, f"{self._name} (batch {self._count})")
            self._count += 1
            if a.shape[0] > 0:
                return a

    def restart(self):
        if not self.restartable:
            return False
        self._it = iter(self._iterable)
        self._count = 0
        return True


def _in_notebook():
    try:
        from IPython import get_ipython
        return get_ipython() is not None and "IPKernelApp" in get_ipython().config
    except Exception:
        return False


class _Bar:
    """tqdm when available (terminal or notebook), else the engine's own stderr bar."""

    def __init__(self):
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        self._tqdm, self._bar = tqdm, None

    @property
    def available(self):
        return self._tqdm is not None

    def __call__(self, step, total, J, samples_per_s, log_step):
        if self._bar is None:
            self._bar = self._tqdm(total=total if total >= 0 else None, initial=step, unit="step",
                                   dynamic_ncols=True)
        if total >= 0 and self._bar.total != total:
            self._bar.total = total
        self._bar.set_postfix_str(f"J={J:.5g}  {samples_per_s:.0f} samples/s", refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self):
        if self._bar is not None:
            self._bar.close()


def train(data, out=None, *, resume=False, progress=None, callback=None, variants=None, **settings):
    """Trains a sparse autoencoder and returns it as a Model.

    data: a NumPy array or CPU torch tensor [N, d_in] (float32 read in place; float64, float16,
      uint8 converted; more axes flattened), a path or glob exactly as the CLI's `data` takes it,
      or an iterable of 2-d arrays/tensors, streamed through a shuffle buffer of shuffle_buffer
      samples (one pass per epoch when the iterable can be iterated again; a generator is read
      once, so epochs = 1).
    out: the directory `sae train --out` would write (model.safetensors, cfg.json,
      metrics.jsonl, checkpoint.safetensors); None: a temporary one, removed afterwards.
    resume: continue from out's checkpoint (the same data and settings).
    progress: a bar (tqdm) on a terminal or notebook; False: none; True: always.
    callback(step, metrics): called at each log step with the metrics.jsonl line as a dict.
    settings: the CLI's keys (sae.settings_help()), e.g. architecture="topk", k=32, d_sae=4096.
    variants: a list of dicts, each with "name" and the settings that differ from `settings`
      (`sae train --variant`): every variant is trained from the one pass over the data into
      out/<name> and a dict name -> Model is returned; the callback's metrics then carry
      "variant". The settings that define the data stream (data, batch_size, epochs, seed,
      shuffle_buffer, normalize, threads, ...) cannot differ between variants.

    Same settings, seed and threads give the bits `sae train` gives on the same data. Ctrl-C
    saves a checkpoint, then raises KeyboardInterrupt; an exception in the callback or the
    iterable is raised after a checkpoint of the last finished step is saved."""
    array = source = feeder = None
    name = "data"
    if isinstance(data, (str, os.PathLike)):
        settings["data"] = os.fspath(data)
        name = ""
    elif isinstance(data, np.ndarray) or _is_tensor(data):
        array, source, _ = _rows(data, "data")
        settings["data"] = f"(array [{array.shape[0]}, {array.shape[1]}])"
    elif isinstance(data, (bytes, dict)) or not hasattr(data, "__iter__"):
        raise DTypeError(f"data: a {type(data).__name__} is not training data; give an array, a tensor, "
                         "a path or glob, or an iterable of 2-d arrays")
    else:
        feeder = _Feeder(data, "data")
        settings["data"] = "(batches)"
        if not feeder.restartable and int(settings.get("epochs", 10)) != 1:
            warnings.warn("sae.train: data is an iterator (a generator?) and can be read only once, so "
                          "epochs = 1; pass a re-iterable object (a list, or a class whose __iter__ starts "
                          "again) to train for more epochs", stacklevel=2)
            settings["epochs"] = 1
    pairs = _settings(settings)
    variant_pairs = []
    for v in variants or []:
        if not isinstance(v, dict) or not isinstance(v.get("name"), str):
            raise DTypeError(f"variants: each variant is a dict with a 'name' (str) and its settings, not {v!r}")
        variant_pairs.append((v["name"], _settings({k: x for k, x in v.items() if k != "name"})))
    if variants is not None and not variant_pairs:
        raise DTypeError("variants: an empty list; give at least one dict with a 'name', or leave variants out")
    if progress is None:
        progress = sys.stderr.isatty() or _in_notebook()
    bar = _Bar() if progress else None
    on_log = None
    if callback is not None:
        on_log = lambda step, line: callback(step, json.loads(line))  # noqa: E731
    tmp = tempfile.TemporaryDirectory(prefix="sae-") if out is None else None
    out_dir = tmp.name if tmp else os.fspath(out)
    try:
        summary = _sae.train(pairs, out_dir, bool(resume), array, source or "f32", feeder, name,
                             bar if bar is not None and bar.available else None,
                             not progress or (bar is not None and bar.available), on_log, variant_pairs)
        if variant_pairs:
            return {name: Model(_sae.Model(os.path.join(out_dir, name)), s)
                    for (name, _), s in zip(variant_pairs, summary)}
        return Model(_sae.Model(out_dir), summary)
    finally:
        if bar is not None:
            bar.close()
        if tmp is not None:
            tmp.cleanup()


# ---- research tools -----------------------------------------------------------------------

def synth(features, dim, samples, *, mean_active=5.0, decay=0.99, correlated=False, correlation_rank=4,
          seed=0, codes=False):
    """Ground-truth data (`sae synth`): a dict with data [samples, dim], features [features, dim]
    (unit rows), probabilities, clipped, mean_active, and codes [samples, features] if asked."""
    return _sae.synth(int(features), int(dim), int(samples), float(mean_active), float(decay),
                      bool(correlated), int(correlation_rank), int(seed), bool(codes))


def mmcs(features, W_dec):
    """Mean max cosine similarity of true features [G, d] against decoder rows [d_sae, d]."""
    return _sae.mmcs(_rows(features, "features")[0], _rows(W_dec, "W_dec")[0])


def gradcheck(d_in=8, d_sae=5, samples=10, eps=3e-5, **settings):
    """`sae gradcheck`: ||num - ana|| / ||num + ana|| per tensor and overall, for a small classic
    model of the given settings (activations, tied, sparsity, coefficients)."""
    return _sae.gradcheck(_settings(settings), int(d_in), int(d_sae), int(samples), float(eps))


def report(path, max_samples=-1, harvest=None, hook=None, latents=1000, contexts=10):
    """`sae report`: writes DIR/report.html for a run or sweep directory; returns the paths.

    harvest, hook, latents ("all" or a count), contexts: the feature browser's `--harvest`,
    `--hook`, `--latents`, `--contexts` (a harvest is found from the run's cfg.json data when
    not given)."""
    return _sae.report(os.fspath(path), int(max_samples), "" if harvest is None else os.fspath(harvest),
                       "" if hook is None else str(hook), str(latents), int(contexts))
