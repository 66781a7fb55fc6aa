#!/usr/bin/env bash
# Screenshots of the web pages for the README (docs/screenshots/*.png): starts `soramai serve` on
# loopback in a throwaway data directory, invites a person into an Org tenant through the API,
# accepts and signs in through the web forms (cookies and CSRF tokens as a browser sends them),
# saves each page, and renders it with headless Chromium (Debian's `chromium`, installed when
# missing). Needs the debug binary (`cargo build -p soramai-server`).
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/screenshots
bin=target/debug/soramai
[ -x "$bin" ] || cargo build --locked -p soramai-server --bin soramai
if ! command -v chromium >/dev/null; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin" serve --addr 127.0.0.1:0 --data-dir "$work/data" >"$work/out" 2>/dev/null &
pid=$!
for _ in $(seq 100); do grep -q '^listening on' "$work/out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$work/out")
admin=$(sed -n 's/^bootstrap admin key.*: //p' "$work/out")
api() { curl -sf "$url$2" -X "$1" -H "Authorization: Bearer $3" -H 'Content-Type: application/json' ${4:+-d "$4"}; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

api POST /v1/tenants "$admin" '{"id": "acme", "tier": "org"}' >/dev/null
api POST /v1/tenants/acme/credits "$admin" '{"amount": 250000}' >/dev/null
key=$(api POST /v1/api_keys "$admin" '{"name": "setup", "scopes": ["inference", "train", "rag", "admin"], "tenant": "acme"}' | field '["key"]')
api POST /v1/api_keys "$key" '{"name": "ci-pipeline", "scopes": ["inference", "train"]}' >/dev/null
printf '%s\n' '{"messages": [{"role": "user", "content": "Where does the cloud council meet?"}, {"role": "assistant", "content": "In Kumo."}]}' >"$work/kumo.jsonl"
curl -sf "$url/v1/files" -H "Authorization: Bearer $key" -F purpose=fine-tune -F "file=@$work/kumo.jsonl" >/dev/null
api POST /v1/members/invitations "$key" '{"email": "bob@acme.example", "role": "viewer"}' >/dev/null
token=$(api POST /v1/members/invitations "$key" '{"email": "ada@acme.example", "role": "admin"}' | field '["token"]')

# The browser's side: a page sets the pre-session CSRF cookie, its form carries the token.
csrf_of() { sed -n 's/.*name="csrf" value="\([0-9a-f]*\)".*/\1/p' "$1" | head -1; }
cookie_of() { sed -n "s/^set-cookie: $2=\([^;]*\).*/\1/Ip" "$1" | tr -d '\r' | head -1; }
curl -s -D "$work/h" -o "$work/accept.html" "$url/invitations/accept?token=$token"
seed=$(cookie_of "$work/h" soramai_csrf)
curl -s -o /dev/null -H "Cookie: soramai_csrf=$seed" \
  --data-urlencode "token=$token" --data-urlencode "password=a long enough passphrase" \
  --data-urlencode "csrf=$(csrf_of "$work/accept.html")" "$url/invitations/accept"
curl -s -o "$work/sign_in.html" -H "Cookie: soramai_csrf=$seed" "$url/sign_in"
curl -s -D "$work/h" -o /dev/null -H "Cookie: soramai_csrf=$seed" \
  --data-urlencode "email=ada@acme.example" --data-urlencode "password=a long enough passphrase" \
  --data-urlencode "csrf=$(csrf_of "$work/sign_in.html")" "$url/sign_in"
session=$(cookie_of "$work/h" soramai_session)
[ -n "$session" ] || { echo "signing in failed" >&2; exit 1; }

mkdir -p "$out"
shot() {
  local name=$1 path=$2
  curl -sf -o "$work/$name.html" -H "Cookie: soramai_session=$session" "$url$path"
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1000,720 \
    --screenshot="$PWD/$out/$name.png" "file://$work/$name.html" >/dev/null 2>&1
  echo "$out/$name.png"
}
cp "$work/sign_in.html" "$work/sign-in.html"
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1000,520 \
  --screenshot="$PWD/$out/sign-in.png" "file://$work/sign-in.html" >/dev/null 2>&1
echo "$out/sign-in.png"
shot teams /dashboard
shot datasets /t/acme/datasets
shot keys /t/acme/keys
shot members /t/acme/members
shot audit /t/acme/audit
