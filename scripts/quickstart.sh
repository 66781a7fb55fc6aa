#!/usr/bin/env bash
# The main job on a fresh machine: fetch the reference model, build the release binary and run the
# quickstart on the embedded default (SQLite + encrypted local blobs) in ./.soramai-data: tenant,
# key, encrypted dataset, a job, metering, key rotation, RAG, a fine-tuned adapter, chat with it, a
# grounded answer with citations, and the audit log verified.
set -euo pipefail
cd "$(dirname "$0")/.."
model="$(./scripts/fetch-model.sh)"
cargo build --release --locked -p soramai-server --bin soramai
exec ./target/release/soramai quickstart --data-dir "${SORAMAI_DATA_DIR:-.soramai-data}" --model "$model"
