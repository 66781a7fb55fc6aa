#!/usr/bin/env bash
# Installs the official OpenAI clients the server's compatibility tests drive: the `openai` Python
# package in .cache/openai-venv and the `openai` npm package in .cache/openai-node. Prints the
# venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/openai-venv
# jsonschema validates the structured outputs the tests ask for.
py_pins=(openai==3.54.0 jsonschema==4.26.0)
py_pin="${py_pins[*]}"
node_pin="openai@7.57.0"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.pins" 2>/dev/null)" != "$py_pin" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "${py_pins[@]}" >&2
  echo "$py_pin" >"$venv/.pins"
fi
node_dir=.cache/openai-node
if [ ! -d "$node_dir/node_modules/openai" ] || [ "$(cat "$node_dir/.pins" 2>/dev/null)" != "$node_pin" ]; then
  mkdir -p "$node_dir"
  (cd "$node_dir" && echo '{"private": true}' >package.json && npm install --silent --no-audit --no-fund "$node_pin" >&2)
  echo "$node_pin" >"$node_dir/.pins"
fi
echo "$PWD/$venv/bin/python"
