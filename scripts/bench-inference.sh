#!/usr/bin/env bash
# Inference speed against llama.cpp on the reference model: installs llama-cpp-python (builds
# llama.cpp for this CPU, once), fetches the model, and runs the alternating benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
SORAMAI_TEST_MODEL="$(./scripts/fetch-model.sh)"
LLAMA_PYTHON="$(./scripts/llama-cpp-venv.sh)"
export SORAMAI_TEST_MODEL LLAMA_PYTHON
grep -m1 "model name" /proc/cpuinfo || true
cargo bench --locked -p soramai-kernels --bench inference -- --rounds "${ROUNDS:-7}"
