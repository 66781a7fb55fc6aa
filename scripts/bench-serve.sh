#!/usr/bin/env bash
# Serving benchmark (benches/serve_load.py): `soramai serve` against llama.cpp's `llama-server` on
# the same GGUF, 1, 8 and 32 concurrent streams on one and eight adapters, both servers in one run.
# Builds the release binary and llama-server (scripts/llama-server.sh, cached under .cache);
# installs httpx into .cache (scripts/openai-clients.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
model="$(./scripts/fetch-model.sh)"
python="$(./scripts/openai-clients.sh)"
llama_server="$(./scripts/llama-server.sh)"
cargo build --release --locked -p soramai-server --bin soramai
exec "$python" benches/serve_load.py target/release/soramai "$model" "$llama_server"
