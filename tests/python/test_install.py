"""`pip install --no-build-isolation .` into a venv made with --system-site-packages, as the
README says; SAE_BUILD_DIR points at this build so nothing is compiled a second time."""
import os
import pathlib
import subprocess
import sys

import pytest

import sae
from conftest import ROOT


@pytest.mark.install
def test_pip_install_into_a_venv(tmp_path, topk_model, data_dir):
    build = pathlib.Path(sae._sae.__file__).resolve().parent.parent.parent  # build/python/sae/_sae*.so
    if not (build / "CMakeCache.txt").exists():
        pytest.skip("the package under test was not imported from a CMake build directory")
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable, "-m", "venv",
                    "--system-site-packages", str(venv)], check=True)
    env = dict(os.environ, SAE_BUILD_DIR=str(build), PIP_NO_INDEX="1")
    env.pop("PYTHONPATH", None)
    r = subprocess.run([str(venv / "bin/pip"), "install", "--no-build-isolation", "-q", str(ROOT)], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    code = ("import sae, numpy as np, sys; m = sae.load(sys.argv[1]); "
            "print(sae.__file__); print(m.encode(np.load(sys.argv[2])).shape)")
    r = subprocess.run([str(venv / "bin/python"), "-c", code, str(topk_model), str(data_dir / "x.npy")],
                       env=env, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    where, shape = r.stdout.splitlines()
    assert where.startswith(str(venv)) and shape == "(600, 16)"
