#!/usr/bin/env bash
# Installs the Debian packages sae needs (when root; otherwise prints the one command to run),
# then configures and builds into build/. Used by scripts/demo.sh and scripts/test.sh.
#   scripts/setup.sh --packages   installs the packages only (scripts/sanitize.sh, scripts/fuzz.sh)
#   scripts/setup.sh --bench      installs the benchmarks' packages too, and stops there
#                                 (bench/compare_torch.py, bench/kernels.cpp; docs/performance.md)
# clang, libclang-rt-14-dev (libFuzzer) and llvm-14 (llvm-symbolizer, for readable reports)
# are for the fuzz targets that CI runs (scripts/sanitize.sh); chromium for the report
# screenshots of tests/test_report.cpp (the test skips without it). libpng-dev and
# libjpeg62-turbo-dev decode images (src/image_decode.cpp); libstb-dev's stb_image_write writes
# PNGs (src/images.cpp), and the tests use stb_image as a second decoder.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(g++ cmake ninja-build pkg-config libdnnl-dev ocl-icd-opencl-dev libcli11-dev libtomlplusplus-dev
          nlohmann-json3-dev libstb-dev zlib1g-dev libpng-dev libjpeg62-turbo-dev libgtest-dev libgmock-dev
          clang libclang-rt-14-dev llvm-14 chromium)
# The Python package (python/, docs/python.md) and its tests (PyTorch: Model.to_torch is tested).
PACKAGES+=(python3-dev pybind11-dev python3-numpy python3-torch python3-pytest python3-setuptools python3-pip
           python3-venv python3-tqdm python3-matplotlib)
# Training across processes (SAE_MPI, docs/distributed.md): OpenMPI and its mpirun.
PACKAGES+=(libopenmpi-dev openmpi-bin)
# Only with --bench:
#   libopenblas0-pthread: an optimised BLAS for PyTorch (without it Debian's torch runs the
#     reference BLAS, many times slower, and the comparison means nothing);
#   libbenchmark-dev: Google Benchmark, for bench/kernels.cpp (-DSAE_BUILD_BENCH=ON).
BENCH_PACKAGES=(libopenblas0-pthread libbenchmark-dev)

mode=${1:-}
case "$mode" in
  ""|--packages) ;;
  --bench) PACKAGES+=("${BENCH_PACKAGES[@]}") ;;
  *) echo "usage: scripts/setup.sh [--packages|--bench]" >&2; exit 2 ;;
esac

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  cmd="apt-get install -y --no-install-recommends ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing Debian packages. Run, then try again:" >&2
    echo "  sudo $cmd" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  log=$(mktemp)
  trap 'rm -f "$log"' EXIT
  if ! apt-get update -qq >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup: 'apt-get update' failed (see above: no network, or a broken entry in /etc/apt/sources.list" \
         "or /etc/apt/sources.list.d/). Fix that, then run: $cmd" >&2
    exit 1
  fi
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    # Name the packages that the configured sources do not have, if that is why.
    unknown=()
    for p in "${missing[@]}"; do
      cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ { print $2 }')
      [ -z "$cand" ] || [ "$cand" = "(none)" ] && unknown+=("$p")
    done
    if [ ${#unknown[@]} -gt 0 ]; then
      echo "setup: apt-get cannot find the Debian package(s) ${unknown[*]}: is this Debian 12 (bookworm)" \
           "with its 'main' component in /etc/apt/sources.list*? Then run: $cmd" >&2
    else
      echo "setup: 'apt-get install' failed (see above). Fix that, then run: $cmd" >&2
    fi
    exit 1
  fi
fi

[ -n "$mode" ] && exit 0

BUILD_DIR=${BUILD_DIR:-build}
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-} >/dev/null
fi
cmake --build "$BUILD_DIR" -j "$(nproc)"
if [ -f "$BUILD_DIR/python/sae/__init__.py" ]; then
  echo "setup: Python: PYTHONPATH=$BUILD_DIR/python /usr/bin/python3 -c 'import sae'  (docs/python.md)"
fi
