#!/usr/bin/env bash
# K-quant speed against llama.cpp in the same run: the inference benchmark (prefill 128 tokens,
# decode 64, 2 threads, alternating engines; peak RSS of both) on Q4_K_M and Q5_K_M files in Llama
# 3.2 1B's shape (random weights, quantized by llama.cpp's own quantizer; made once, about 3 GB of
# disk while they are made, 1.6 GB kept under .cache/models/kquant) and on the real Gemma 3 270M
# Q4_K_M. ROUNDS (default 5) rounds each. Prints the tables only.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_PYTHON="$(./scripts/llama-cpp-venv.sh)"
export LLAMA_PYTHON
mapfile -t models < <("$LLAMA_PYTHON" scripts/make_kquant_models.py "$PWD/.cache/models/kquant" 2>/dev/null)
models+=("$(./scripts/fetch-gemma.sh)")
grep -m1 "model name" /proc/cpuinfo || true
if grep -q avx512_vnni /proc/cpuinfo; then echo "cpu: AVX-512 VNNI"; else echo "cpu: AVX2 (no AVX-512 VNNI)"; fi
cargo build --release --locked -p soramai-kernels --bench inference 2>/dev/null
for m in "${models[@]}"; do
  echo
  SORAMAI_TEST_MODEL="$m" cargo bench --locked -p soramai-kernels --bench inference -- --rounds "${ROUNDS:-5}" 2>/dev/null \
    | grep -v "^round "
done
