#!/usr/bin/env bash
# Installs what the dashboard's real-browser tests drive: Debian's Chromium (`chromium`, when
# missing) and the `playwright-core` npm package (no bundled browser, no download of its own) in
# .cache/browser. Prints the Chromium executable.
set -euo pipefail
cd "$(dirname "$0")/.."
pin="playwright-core@1.65.2"
if ! command -v chromium >/dev/null; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo -n"
  $sudo_cmd apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
fi
dir=.cache/browser
if [ ! -d "$dir/node_modules/playwright-core" ] || [ "$(cat "$dir/.pins" 2>/dev/null)" != "$pin" ]; then
  mkdir -p "$dir"
  (cd "$dir" && echo '{"private": true}' >package.json && npm install --silent --no-audit --no-fund "$pin" >&2)
  echo "$pin" >"$dir/.pins"
fi
command -v chromium
