#!/usr/bin/env bash
# Backup, verify and restore of the embedded default on a local target: a Basic tenant with nine
# 30 MB datasets (270 MB of ciphertext) uploaded over HTTP, then `soramai backup` (every copied
# object authenticated), the same again (incremental), `soramai backup verify` (every object's
# tags and every audit chain) and `soramai restore` (staged, authenticated, renamed into place),
# each timed with its peak RSS. SORAMAI_BIN picks the binary (default target/debug/soramai, built
# with the workspace's features if absent). Prints the table only.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${SORAMAI_BIN:-$PWD/target/debug/soramai}"
if [ ! -x "$bin" ]; then
  cargo build --locked -p soramai-server >/dev/null 2>&1
fi
work="$(mktemp -d)"
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
SORAMAI_LOG=off "$bin" serve --addr 127.0.0.1:0 --data-dir "$work/data" >"$work/out" 2>/dev/null &
server=$!
for _ in $(seq 100); do grep -q "listening on" "$work/out" && break; sleep 0.1; done
url="$(sed -n 's/^listening on //p' "$work/out")"
admin="$(sed -n 's/^bootstrap admin key.*: //p' "$work/out")"
call() { curl -sf -H "Authorization: Bearer $1" -H 'Content-Type: application/json' "${@:2}"; }
call "$admin" -X POST "$url/v1/tenants" -d '{"id": "acme", "tier": "basic"}' >/dev/null
key="$(call "$admin" -X POST "$url/v1/api_keys" -d '{"name": "bench", "scopes": ["train"], "tenant": "acme"}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')"
python3 - "$work/part.jsonl" <<'PY'
import json, sys
line = json.dumps({"messages": [{"role": "user", "content": "q " * 200}, {"role": "assistant", "content": "a " * 200}]})
with open(sys.argv[1], "w") as f:
    f.write((line + "\n") * (30_000_000 // (len(line) + 1)))
PY
for i in $(seq 9); do
  curl -sf -H "Authorization: Bearer $key" -F purpose=fine-tune -F "file=@$work/part.jsonl;filename=part-$i.jsonl" \
    "$url/v1/files" >/dev/null
done
kill "$server"; wait "$server" 2>/dev/null || true
timed() { /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  read -r secs kib <"$work/time"; printf '| %s | %s s | %s MB |\n' "$label" "$secs" "$((kib / 1024))"; }
target="file://$work/target"
echo "| step | time | peak RSS |"
echo "| --- | ---: | ---: |"
label="backup (9 objects authenticated and copied, 270 MB)"; timed "$bin" backup --data-dir "$work/data" --to "$target"
label="backup again (incremental: 0 copied)"; timed "$bin" backup --data-dir "$work/data" --to "$target"
label="verify (every object's tags and audit chain)"; timed "$bin" backup verify --from "$target" --root-key-file "$work/data/root.key"
label="restore (staged, authenticated, renamed into place)"; timed "$bin" restore --from "$target" --data-dir "$work/restored" --root-key-file "$work/data/root.key"
