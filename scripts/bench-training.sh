#!/usr/bin/env bash
# QLoRA training speed and peak memory against Hugging Face PEFT + transformers on CPU, in one run:
#   ./scripts/bench-training.sh [STEPS] [SEQ]
# Builds the trainer probe (release) and the PEFT venv (scripts/peft-venv.sh) first.
set -euo pipefail
cd "$(dirname "$0")/.."
model="$(./scripts/fetch-model.sh)"
python="$(./scripts/peft-venv.sh)"
cargo build --release --locked -p soramai-kernels --example train_speed >&2
exec "$python" -W ignore benches/training_vs_peft.py "$model" target/release/examples/train_speed "${1:-5}" "${2:-128}"
