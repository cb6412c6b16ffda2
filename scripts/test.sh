#!/usr/bin/env bash
# Set-up, then the whole test suite through ctest, then the Python package's tests (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
(cd "$BUILD_DIR" && ctest --output-on-failure -j "$(nproc)" "$@")
# The Python package (built with the rest: build/python/sae), with Debian's python3 and pytest.
if [ ! -f "$BUILD_DIR/python/sae/__init__.py" ]; then
  echo "test: $BUILD_DIR/python/sae was not built (pybind11-dev or python3-dev missing?); see docs/python.md" >&2
  exit 1
fi
PYTHONPATH="$BUILD_DIR/python" /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/python
