#!/usr/bin/env bash
# Builds the Node addon (napi-rs) with cargo and puts it beside the package's JavaScript as
# bindings/node/soramai.node. Extra arguments go to `cargo build` (the test script passes
# `--workspace --all-targets` and the tests' features, so the shared crates are not compiled twice).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache
cargo build --locked -p soramai-node --message-format=json-render-diagnostics "$@" >.cache/node-build.json
lib="$(grep -o '"filenames":\["[^"]*libsoramai_node\.so"' .cache/node-build.json | tail -1 | sed 's/.*\["//; s/"$//')"
[ -n "$lib" ] || { echo "cargo did not report the addon's path" >&2; exit 1; }
cp "$lib" bindings/node/soramai.node.tmp
mv bindings/node/soramai.node.tmp bindings/node/soramai.node
echo "$PWD/bindings/node"
