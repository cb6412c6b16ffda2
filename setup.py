"""The Python package `sae` (python/sae) and its extension sae._sae, built by CMake.

    python3 -m venv --system-site-packages .venv && .venv/bin/pip install --no-build-isolation .

SAE_BUILD_DIR=build reuses an existing CMake build directory (only the extension target is
built); otherwise a fresh Release build is configured under setuptools' build_temp."""
import os
import pathlib
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).resolve().parent
(ROOT / "build-python").mkdir(exist_ok=True)


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        if os.environ.get("SAE_BUILD_DIR"):
            build = pathlib.Path(os.environ["SAE_BUILD_DIR"]).resolve()
        else:
            build = pathlib.Path(self.build_temp).resolve() / "cmake"
        if not (build / "CMakeCache.txt").exists():
            generator = ["-G", "Ninja"] if shutil.which("ninja") else []
            subprocess.check_call(["cmake", "-S", str(ROOT), "-B", str(build), *generator,
                                   "-DCMAKE_BUILD_TYPE=Release", "-DSAE_BUILD_TESTS=OFF", "-DSAE_PYTHON=ON",
                                   f"-DPYTHON_EXECUTABLE={sys.executable}"])
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.check_call(["cmake", "--build", str(build), "--target", "_sae", "-j", jobs])
        built = sorted((build / "python" / "sae").glob("_sae*.so"))
        if not built:
            raise RuntimeError(f"{build}/python/sae: no _sae extension was built (is pybind11-dev installed?)")
        dest = pathlib.Path(self.get_ext_fullpath(ext.name))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built[-1], dest)


setup(
    name="sae",
    version="0.1.0",
    description="Fast sparse autoencoders: the libsae engine from Python",
    packages=["sae"],
    package_dir={"": "python"},
    ext_modules=[Extension("sae._sae", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.9",
    install_requires=["numpy"],
    zip_safe=False,
    # setuptools' own files stay out of build/ (the CMake build directory) and the source tree
    options={"build": {"build_base": "build-python"}, "egg_info": {"egg_base": "build-python"}},
)
