#!/usr/bin/env bash
# A PostgreSQL primary and its synchronous streaming replica on loopback, for the failover test
# (soramai-core/tests/failover.rs), apart from scripts/postgres.sh's server that the other tests
# share. Needs Debian's postgresql, which scripts/postgres.sh installs (scripts/test.sh runs it first).
#   up            fresh primary (port $SORAMAI_PG_FAILOVER_PORT, default 54335) and replica (+1),
#                 the replica streaming synchronously; prints the primary's and the replica's URL
#   kill-primary  SIGKILLs the primary's postmaster (a crashed primary)
#   promote       promotes the replica to primary
#   stop          stops both and removes them
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$PWD/.cache/postgres-failover"
p1="${SORAMAI_PG_FAILOVER_PORT:-54335}"
p2=$((p1 + 1))
user=soramai

bin=""
for d in "$(pg_config --bindir 2>/dev/null || true)" /usr/lib/postgresql/*/bin; do
  if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_basebackup" ]; then bin="$d"; break; fi
done
if [ -z "$bin" ]; then
  [ "${1:-}" = stop ] && exit 0
  echo "no PostgreSQL server binaries: scripts/postgres.sh installs Debian's postgresql" >&2
  exit 1
fi
as_owner() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case "${1:-}" in
  stop)
    for c in primary replica; do
      [ -f "$dir/$c/PG_VERSION" ] && as_owner "$bin/pg_ctl" -D "$dir/$c" -m immediate stop >/dev/null 2>&1 || true
    done
    rm -rf "$dir"
    exit 0 ;;
  kill-primary)
    pid="$(head -1 "$dir/primary/postmaster.pid")"
    kill -9 "$pid"
    # Its children go with it (they notice the postmaster died); wait for the port to free.
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    exit 0 ;;
  promote)
    as_owner "$bin/pg_ctl" -D "$dir/replica" -w -t 60 promote >/dev/null
    exit 0 ;;
  up) ;;
  *) echo "usage: $0 up|kill-primary|promote|stop" >&2; exit 2 ;;
esac

"$0" stop
mkdir -p "$dir"
password="$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
printf '%s\n' "$password" >"$dir/password"
chmod 600 "$dir/password"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$dir"
as_owner "$bin/initdb" -D "$dir/primary" -U "$user" --pwfile="$dir/password" --auth-local=scram-sha-256 \
  --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
# Every commit waits for the replica to have it: a failover loses nothing committed.
cat >>"$dir/primary/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $p1
unix_socket_directories = '$dir'
wal_level = replica
max_wal_senders = 4
synchronous_standby_names = 'replica'
synchronous_commit = on
CONF
as_owner "$bin/pg_ctl" -D "$dir/primary" -l "$dir/primary.log" -w -t 60 start >/dev/null
as_owner env PGPASSWORD="$password" "$bin/pg_basebackup" -h 127.0.0.1 -p "$p1" -U "$user" -D "$dir/replica" -X stream >/dev/null
cat >>"$dir/replica/postgresql.conf" <<CONF
port = $p2
synchronous_standby_names = ''
primary_conninfo = 'host=127.0.0.1 port=$p1 user=$user password=$password application_name=replica'
CONF
as_owner touch "$dir/replica/standby.signal"
as_owner "$bin/pg_ctl" -D "$dir/replica" -l "$dir/replica.log" -w -t 60 start >/dev/null
for _ in $(seq 1 200); do
  state="$(PGPASSWORD="$password" psql -h 127.0.0.1 -p "$p1" -U "$user" -d postgres -Atc \
    "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'replica'" 2>/dev/null || true)"
  [ "$state" = sync ] && break
  sleep 0.1
done
[ "$state" = sync ] || { echo "the replica did not start streaming" >&2; exit 1; }
echo "postgres://$user:$password@127.0.0.1:$p1/postgres postgres://$user:$password@127.0.0.1:$p2/postgres"
