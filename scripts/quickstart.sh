#!/usr/bin/env bash
# The main job on a fresh machine: build the release binary and run the quickstart on the embedded
# default (SQLite + encrypted local blobs) in ./.soramai-data.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p soramai-server --bin soramai
exec ./target/release/soramai quickstart --data-dir "${SORAMAI_DATA_DIR:-.soramai-data}"
