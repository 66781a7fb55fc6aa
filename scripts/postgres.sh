#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the PostgreSQL metadata store's tests: installs
# Debian's postgresql when there is none, creates a cluster in .cache/postgres (owned by the
# `postgres` system user when run as root: initdb refuses root), starts it on 127.0.0.1 with
# SCRAM password authentication and TLS (a test CA in .cache/postgres/ca.pem signs the server's
# certificate for 127.0.0.1; other-ca.pem is a CA that signed nothing), and prints its admin
# connection string. Running it again reuses the running server. `scripts/postgres.sh stop` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$PWD/.cache/postgres"
data="$dir/data"
port="${SORAMAI_PG_PORT:-54329}"
user=soramai

find_bin() {
  local d
  for d in "$(pg_config --bindir 2>/dev/null || true)" /usr/lib/postgresql/*/bin; do
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo -n"
if ! bin="$(find_bin)"; then
  $sudo_cmd apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq postgresql >/dev/null
  bin="$(find_bin)"
fi

# Runs a server command as the cluster's owner.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

if [ "${1:-}" = stop ]; then
  [ -d "$data" ] && as_owner "$bin/pg_ctl" -D "$data" -m fast stop >&2 || true
  exit 0
fi

mkdir -p "$dir"
password_file="$dir/password"
if [ ! -f "$data/PG_VERSION" ]; then
  rm -rf "$data"
  mkdir -p "$data"
  head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$password_file"
  chmod 600 "$password_file"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres: "$dir"
  fi
  as_owner "$bin/initdb" -D "$data" -U "$user" --pwfile="$password_file" --auth-local=scram-sha-256 \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >&2
fi

# TLS: a test CA, the server's certificate for 127.0.0.1 signed by it, and a second, unrelated CA.
if [ ! -f "$dir/server.crt" ]; then
  tmp="$(mktemp -d)"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=soramai test CA" \
    -keyout "$tmp/ca.key" -out "$tmp/ca.pem" >/dev/null 2>&1
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=unrelated CA" \
    -keyout "$tmp/other.key" -out "$tmp/other-ca.pem" >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$tmp/server.key" -out "$tmp/server.csr" >/dev/null 2>&1
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$tmp/san.ext"
  openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial -days 3650 \
    -extfile "$tmp/san.ext" -out "$tmp/server.crt" >/dev/null 2>&1
  install -m 644 "$tmp/ca.pem" "$tmp/other-ca.pem" "$dir/"
  install -m 600 "$tmp/server.key" "$dir/server.key"
  install -m 644 "$tmp/server.crt" "$dir/server.crt"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$dir/server.key" "$dir/server.crt"
  rm -rf "$tmp"
fi

if ! as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
  as_owner "$bin/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=200 -c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key" start >&2
fi

echo "postgres://$user:$(cat "$password_file")@127.0.0.1:$port/postgres"
