#!/usr/bin/env bash
# An S3-compatible endpoint on loopback for the S3 blob store's tests: moto's server (PyPI
# `moto[server]`, into .cache/moto-venv), started in the background with one bucket,
# `soramai-test`. Prints its endpoint URL. Running it again reuses the running server.
# `scripts/s3-mock.sh stop` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/moto-venv
port="${SORAMAI_S3_PORT:-54340}"
endpoint="http://127.0.0.1:$port"
pidfile=.cache/moto.pid

if [ "${1:-}" = stop ]; then
  [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  rm -f "$pidfile"
  exit 0
fi

if [ ! -x "$venv/bin/moto_server" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.2.5' >&2
fi

up() { curl -s -o /dev/null "$endpoint/" 2>/dev/null; }
if ! up; then
  setsid nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >.cache/moto.log 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 1 100); do
    up && break
    sleep 0.2
  done
  up || { echo "moto_server did not start (.cache/moto.log)" >&2; exit 1; }
fi
# CreateBucket (moto does not check signatures); an existing bucket answers with a conflict.
curl -s -o /dev/null -X PUT "$endpoint/soramai-test"
echo "$endpoint"
