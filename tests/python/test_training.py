"""Streaming from Python iterables, resume, interruption, callbacks, progress."""
import json
import os
import signal
import time

import numpy as np
import pytest

import sae
from conftest import ADAM, TOPK, cli, metrics, same_bytes

STREAM = dict(architecture="topk", k=3, d_sae=16, optimizer="adam", batch_size=64, threads=1, log_every=4,
              checkpoint_every=7, shuffle_buffer=150)


def batches(x, size=50):
    for i in range(0, len(x), size):
        yield x[i:i + size]


class Batches:
    """Re-iterable: each iter() starts a new pass."""

    def __init__(self, x, size=50, fail_at=None):
        self.x, self.size, self.fail_at, self.served = x, size, fail_at, 0

    def __iter__(self):
        for i in range(0, len(self.x), self.size):
            if self.fail_at is not None and self.served == self.fail_at:
                raise ValueError("the data source broke")
            self.served += 1
            yield self.x[i:i + self.size]


def test_generator_training_is_deterministic(tmp_path, x):
    s = dict(STREAM, epochs=1)
    sae.train(batches(x), tmp_path / "a", progress=False, **s)
    sae.train(batches(x), tmp_path / "b", progress=False, **s)
    assert same_bytes(tmp_path / "a/model.safetensors", tmp_path / "b/model.safetensors")
    # batch boundaries do not matter: the samples go through the same buffer in the same order
    sae.train(batches(x, 7), tmp_path / "c", progress=False, **s)
    assert same_bytes(tmp_path / "a/model.safetensors", tmp_path / "c/model.safetensors")
    # torch batches too
    torch = pytest.importorskip("torch")
    sae.train((torch.from_numpy(b) for b in batches(x)), tmp_path / "d", progress=False, **s)
    assert same_bytes(tmp_path / "a/model.safetensors", tmp_path / "d/model.safetensors")
    lines = metrics(tmp_path / "a/metrics.jsonl")
    assert lines[-1]["step"] == 10  # ceil(600 / 64)


def test_a_generator_is_read_once_so_epochs_is_one(tmp_path, x):
    with pytest.warns(UserWarning, match="epochs = 1"):
        m = sae.train(batches(x), tmp_path, progress=False, **dict(STREAM, epochs=3))
    assert m.cfg["epochs"] == 1 and m.summary["steps"] == 10


def test_a_reiterable_gives_one_pass_per_epoch(tmp_path, x):
    m = sae.train(Batches(x), tmp_path, progress=False, **dict(STREAM, epochs=3))
    # ceil(1800 / 64) batches of 64, the last one reading into a fourth pass (as shards do)
    assert m.summary["steps"] == 29 and m.summary["samples"] == 29 * 64
    assert m.cfg["shuffle_buffer"] == 150
    assert [j["epoch"] for j in metrics(tmp_path / "metrics.jsonl")][-1] == pytest.approx(29 * 64 / 600)


def test_every_pass_must_give_the_same_samples(tmp_path, x):
    class Shrinking:
        def __init__(self):
            self.n = 600

        def __iter__(self):
            self.n -= 100
            return iter([x[:self.n]])

    with pytest.raises(sae.Error, match="data: pass 1 gave 400 samples but the first gave 500"):
        sae.train(Shrinking(), tmp_path, progress=False, **dict(STREAM, epochs=3))


def test_streamed_memory_is_the_buffer_not_the_data(tmp_path):
    # 40,000 x 64 float32 (10 MiB) streamed through a 1,000-sample buffer: the trainer holds the
    # buffer and one batch, so the generator's arrays are freed as they are consumed.
    import weakref
    alive = []

    def gen():
        rng = np.random.default_rng(1)
        for _ in range(100):
            b = rng.standard_normal((400, 64)).astype(np.float32)
            alive.append(weakref.ref(b))
            yield b
            del b

    sae.train(gen(), tmp_path, progress=False, **dict(STREAM, epochs=1, shuffle_buffer=1000))
    assert sum(r() is not None for r in alive) <= 1


def test_resume_gives_the_bits_of_an_uninterrupted_run(tmp_path, x):
    sae.train(x, tmp_path / "full", progress=False, **dict(ADAM, epochs=4))
    sae.train(x, tmp_path / "part", progress=False, **dict(ADAM, epochs=2))
    sae.train(x, tmp_path / "part", resume=True, progress=False, **dict(ADAM, epochs=4))
    assert same_bytes(tmp_path / "full/model.safetensors", tmp_path / "part/model.safetensors")
    assert metrics(tmp_path / "full/metrics.jsonl") == metrics(tmp_path / "part/metrics.jsonl")


def test_resume_a_cli_run_from_python(tmp_path, data_dir):
    path = str(data_dir / "x.npy")
    sae.train(path, tmp_path / "full", progress=False, **dict(TOPK, epochs=4))
    cli("train", *sum((["--set", f"{k}={sae._setting_text(k, v)}"] for k, v in dict(TOPK, epochs=2).items()), []),
        "--set", f"data={path}", "--out", tmp_path / "part")
    sae.train(path, tmp_path / "part", resume=True, progress=False, **dict(TOPK, epochs=4))
    assert same_bytes(tmp_path / "full/model.safetensors", tmp_path / "part/model.safetensors")


def test_streamed_resume_replays_the_buffer(tmp_path, x):
    s = dict(STREAM, epochs=3)
    sae.train(Batches(x), tmp_path / "full", progress=False, **s)
    sae.train(Batches(x), tmp_path / "part", progress=False, **dict(s, epochs=2))
    sae.train(Batches(x), tmp_path / "part", resume=True, progress=False, **s)
    assert same_bytes(tmp_path / "full/model.safetensors", tmp_path / "part/model.safetensors")


def test_keyboard_interrupt_from_the_callback_saves_a_checkpoint(tmp_path, x):
    s = dict(TOPK, epochs=6, checkpoint_every=1000)
    sae.train(x, tmp_path / "full", progress=False, **s)

    def stop(step, m):
        if step == 24:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sae.train(x, tmp_path / "part", progress=False, callback=stop, **s)
    assert not (tmp_path / "part/model.safetensors").exists()
    assert metrics(tmp_path / "part/metrics.jsonl")[-1]["step"] == 24
    sae.train(x, tmp_path / "part", resume=True, progress=False, **s)
    assert same_bytes(tmp_path / "full/model.safetensors", tmp_path / "part/model.safetensors")


def test_sigint_saves_a_checkpoint_then_raises_and_python_keeps_its_handler(tmp_path, x):
    s = dict(TOPK, epochs=6, checkpoint_every=1000)
    # Started in the background by a non-interactive shell (nohup, cmd &), Python inherits SIGINT
    # ignored and installs no handler of its own: give it Python's, as an interactive session has.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    before = signal.getsignal(signal.SIGINT)

    def ctrl_c(step, m):
        if step == 12:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would: the engine's handler sees it

    with pytest.raises(KeyboardInterrupt, match="interrupted at step 12; checkpoint saved"):
        sae.train(x, tmp_path / "part", progress=False, callback=ctrl_c, **s)
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt):  # Python's own handler is back
        os.kill(os.getpid(), signal.SIGINT)
        # another thread of the process (OpenMP's, oneDNN's) may take the signal, so the handler
        # can run a moment later: wait up to 2 s (sleep returns early when it has run)
        for _ in range(200):
            time.sleep(0.01)
    signal.signal(signal.SIGINT, inherited)
    sae.train(x, tmp_path / "full", progress=False, **s)
    sae.train(x, tmp_path / "part", resume=True, progress=False, **s)
    assert same_bytes(tmp_path / "full/model.safetensors", tmp_path / "part/model.safetensors")


def test_an_exception_in_the_data_source_propagates_after_a_checkpoint(tmp_path, x):
    s = dict(STREAM, epochs=2)
    sae.train(Batches(x), tmp_path / "full", progress=False, **s)
    src = Batches(x, fail_at=15)  # in the second pass
    with pytest.raises(ValueError, match="the data source broke"):
        sae.train(src, tmp_path / "part", progress=False, **s)
    ck = (tmp_path / "part/checkpoint.safetensors")
    assert ck.exists()
    header = json.loads(ck.read_bytes()[8:8 + int.from_bytes(ck.read_bytes()[:8], "little")])
    assert int(header["__metadata__"]["step"]) > 0
    sae.train(Batches(x), tmp_path / "part", resume=True, progress=False, **s)
    assert same_bytes(tmp_path / "full/model.safetensors", tmp_path / "part/model.safetensors")


def test_callback_gets_each_metrics_line(tmp_path, x):
    seen = []
    sae.train(x, tmp_path, progress=False, callback=lambda step, m: seen.append((step, m)), **ADAM)
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [s for s, _ in seen] == [j["step"] for j in lines]
    assert [m for _, m in seen] == lines


def test_progress_bar_and_out_none(x, capsys):
    pytest.importorskip("tqdm")
    m = sae.train(x, progress=True, **ADAM)
    assert m.summary["steps"] == 30 and m.d_sae == 8
    assert "step" in capsys.readouterr().err
    sae.train(x, progress=False, **ADAM)
    assert capsys.readouterr().err == ""


def test_training_releases_the_gil(tmp_path, x):
    import threading
    import time
    ticks, done = [], threading.Event()

    def tick():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=tick)
    t.start()
    t0 = time.perf_counter()
    sae.train(np.tile(x, (20, 1)), tmp_path, progress=False, **dict(ADAM, d_sae=256, epochs=6))
    t1 = time.perf_counter()
    done.set()
    t.join()
    assert t1 - t0 > 0.05
    inside = [s for s in ticks if t0 + 0.2 * (t1 - t0) < s < t1 - 0.2 * (t1 - t0)]
    assert len(inside) >= 5, f"{len(inside)} ticks during {t1 - t0:.3f} s of training"
