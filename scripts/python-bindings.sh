#!/usr/bin/env bash
# Builds the Python bindings with maturin into .cache/py-venv (with pytest) and prints the venv's
# python. Extra arguments go to `maturin develop` (the test script passes the features the
# workspace's tests were built with, so the shared crates are not compiled a second time).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/py-venv
pins="maturin==1.16.0 pytest==9.2.0"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.pins" 2>/dev/null)" != "$pins" ]; then
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir $pins >&2
  echo "$pins" >"$venv/.pins"
fi
VIRTUAL_ENV="$PWD/$venv" PATH="$PWD/$venv/bin:$PATH" \
  "$venv/bin/maturin" develop --quiet --locked -m bindings/python/Cargo.toml "$@" >&2
echo "$PWD/$venv/bin/python"
