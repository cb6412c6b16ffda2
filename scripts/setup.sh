#!/usr/bin/env bash
# Installs the Debian packages sae needs (when root; otherwise prints the one command to run),
# then configures and builds into build/. Used by scripts/demo.sh and scripts/test.sh.
# `scripts/setup.sh --packages` installs the packages only (scripts/sanitize.sh, scripts/fuzz.sh).
# clang, libclang-rt-14-dev (libFuzzer) and llvm-14 (llvm-symbolizer, for readable reports)
# are for the fuzz targets that CI runs (scripts/sanitize.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(g++ cmake ninja-build pkg-config libdnnl-dev ocl-icd-opencl-dev libcli11-dev libtomlplusplus-dev
          nlohmann-json3-dev libstb-dev zlib1g-dev libgtest-dev libgmock-dev libbenchmark-dev
          clang libclang-rt-14-dev llvm-14 chromium)
# The Python package (python/, docs/python.md) and its tests.
PACKAGES+=(python3-dev pybind11-dev python3-numpy python3-torch python3-pytest python3-setuptools python3-pip
           python3-venv python3-tqdm python3-matplotlib libopenblas0-pthread)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages. Run, then try again:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

[ "${1:-}" = --packages ] && exit 0

BUILD_DIR=${BUILD_DIR:-build}
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-} >/dev/null
fi
cmake --build "$BUILD_DIR" -j "$(nproc)"
if [ -f "$BUILD_DIR/python/sae/__init__.py" ]; then
  echo "setup: Python: PYTHONPATH=$BUILD_DIR/python /usr/bin/python3 -c 'import sae'  (docs/python.md)"
fi
