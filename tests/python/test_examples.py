"""examples/python: each prints what its docstring says (mnist_ufldl shortened)."""
import os
import pathlib
import subprocess
import sys

import sae
from conftest import ROOT

EXAMPLES = ROOT / "examples" / "python"


def run(script, *args, cwd):
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(sae._sae.__file__).resolve().parent.parent))
    r = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, env=env,
                       cwd=cwd)
    assert r.returncode == 0, r.stderr
    return r.stdout


def expected(script):
    doc = (EXAMPLES / script).read_text().split('"""')[1]
    return [line.strip() for line in doc.split("Expected output")[1].splitlines()[1:] if line.startswith("    ")]


def test_topk_synth_prints_its_expected_output(tmp_path):
    assert run("topk_synth.py", cwd=tmp_path).splitlines() == expected("topk_synth.py")


def test_mnist_ufldl_runs_and_draws_the_filters(tmp_path):
    out = run("mnist_ufldl.py", str(tmp_path / "m"), "--iterations", "2", cwd=tmp_path).splitlines()
    want = expected("mnist_ufldl.py")
    assert out[0] == want[0] and out[1].startswith("trained 2 iterations")
    png = tmp_path / "m" / "filters.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
