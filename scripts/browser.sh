#!/usr/bin/env bash
# Installs what the dashboard's real-browser tests drive: Debian's Chromium (`chromium`, when
# missing), the `playwright-core` npm package (no bundled browser, no download of its own) and
# `oidc-provider` (an OpenID Certified provider the single sign-on test runs on loopback), in
# .cache/browser. Prints the Chromium executable.
set -euo pipefail
cd "$(dirname "$0")/.."
pin="playwright-core@1.65.2 oidc-provider@9.13.3"
if ! command -v chromium >/dev/null; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo -n"
  $sudo_cmd apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
fi
dir=.cache/browser
if [ ! -d "$dir/node_modules/playwright-core" ] || [ "$(cat "$dir/.pins" 2>/dev/null)" != "$pin" ]; then
  mkdir -p "$dir"
  # shellcheck disable=SC2086 # two packages
  (cd "$dir" && echo '{"private": true}' >package.json && npm install --silent --no-audit --no-fund $pin >&2)
  echo "$pin" >"$dir/.pins"
fi
command -v chromium
