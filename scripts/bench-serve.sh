#!/usr/bin/env bash
# Load benchmark of `soramai serve` (benches/serve_load.py): 32 concurrent streaming chats over 8
# tenants with 8 adapters, against one adapter, the base model, and llama-cpp-python's server on
# the same GGUF. Builds the release binary; installs httpx (with the openai client) and
# llama-cpp-python's server extras into .cache.
set -euo pipefail
cd "$(dirname "$0")/.."
model="$(./scripts/fetch-model.sh)"
python="$(./scripts/openai-clients.sh)"
llama="$(./scripts/llama-cpp-venv.sh)"
"$llama" -m pip install --quiet --disable-pip-version-check "fastapi>=0.100" "uvicorn>=0.22" "sse-starlette>=1.6" \
  "starlette-context>=0.3.6" "pydantic-settings>=2.0" >&2
cargo build --release --locked -p soramai-server --bin soramai
exec "$python" benches/serve_load.py target/release/soramai "$model" "$llama"
