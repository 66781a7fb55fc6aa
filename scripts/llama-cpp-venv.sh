#!/usr/bin/env bash
# Creates .cache/llama-venv with llama-cpp-python (llama.cpp built from source for this CPU) and
# numpy: the peer the benchmarks measure against and the source of the reference fixtures.
# The first run compiles llama.cpp (about 7 minutes on 2 cores). Prints the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/llama-venv
version=0.3.36
if ! "$venv/bin/python" -c "import llama_cpp, numpy, sys; sys.exit(llama_cpp.__version__ != '$version')" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check numpy >&2
  CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$venv/bin/pip" install --quiet --disable-pip-version-check "llama-cpp-python==$version" >&2
fi
echo "$PWD/$venv/bin/python"
