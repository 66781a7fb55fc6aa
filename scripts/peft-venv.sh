#!/usr/bin/env bash
# Creates .cache/peft-venv with Hugging Face transformers + PEFT on PyTorch (CPU use only) and the
# gguf reader: the peer for the adapter interop test and the training benchmark. PyPI's Linux torch
# wheel brings its CUDA libraries along (about 4 GB on disk, a few minutes to fetch); none of them
# is used. Prints the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/peft-venv
pins=(torch==2.15.0 transformers==5.23.0 peft==0.21.2 gguf==0.19.0 safetensors==0.8.0 accelerate==1.15.0)
stamp="$venv/.pins"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${pins[*]}" ]; then
  python3 -m venv "$venv"
  # No pip cache: it would hold a second copy of those 4 GB.
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "${pins[@]}" numpy >&2
  echo "${pins[*]}" >"$stamp"
fi
echo "$PWD/$venv/bin/python"
