#!/usr/bin/env bash
# Screenshots of the dashboard for the README (docs/screenshots/*.png): the real-browser test
# (soramai-server/tests/browser/dashboard.test.mjs, headless Chromium through playwright-core)
# saves the main pages as it goes through them. Needs the debug binary and the reference model.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x target/debug/soramai ] || cargo build --locked -p soramai-server --bin soramai
model=$(./scripts/fetch-model.sh)
chromium=$(./scripts/browser.sh)
rm -f docs/screenshots/*.png
mkdir -p docs/screenshots
SORAMAI_SCREENSHOTS="$PWD/docs/screenshots" SORAMAI_BIN="$PWD/target/debug/soramai" SORAMAI_TEST_MODEL="$model" \
  BROWSER_NODE_DIR="$PWD/.cache/browser" CHROMIUM="$chromium" \
  node --test soramai-server/tests/browser/dashboard.test.mjs >&2
ls docs/screenshots/*.png
