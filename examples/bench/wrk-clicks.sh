#!/usr/bin/env bash
# Click redirects under wrk (docs/BENCHMARKS.md, issue 24): a fresh release trailmark-server on
# SQLite (default durability), a campaign and a link made through the admin API, then
# `wrk -t1 -c$CONN -d${SECS}s` on /c/<code> with an Android user agent. Prints wrk's rate and
# latency and how many clicks the store holds afterwards (none may be lost: stored >= answered).
#
#   cargo build --release -p trailmark-examples --bin trailmark-server
#   CONN=8 SECS=10 examples/bench/wrk-clicks.sh
# Needs wrk, curl and python3 (Debian: apt-get install wrk curl). PORT (default 18080) must be
# free.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
server=${SERVER:-$root/target/release/trailmark-server}
port=${PORT:-18080}
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -INT "$pid" 2>/dev/null; rm -rf "$work"' EXIT
if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/healthz"; then
    echo "port $port is taken; set PORT" >&2
    exit 1
fi
admin=adm-key-0123456789ab
"$server" --app bench:secretsecretsecret --admin-key "$admin" --db "$work/t.db" --ip-rate 1000000 \
    --listen "127.0.0.1:$port" > "$work/server.log" 2>&1 &
pid=$!
up=
for _ in $(seq 100); do
    curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$port/healthz" && { up=1; break; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$up" ]; then
    echo "the server did not come up:" >&2
    tail -20 "$work/server.log" >&2
    exit 1
fi
api() { curl -sf --max-time 10 -H "Authorization: Bearer $admin" -H 'content-type: application/json' -d "$2" "http://127.0.0.1:$port$1"; }
field() { python3 -c "import sys, json; print(json.load(sys.stdin)['$1'])"; }
campaign=$(api /v1/campaigns '{"name":"bench","network":"benchnet","app_id":"bench"}' | field campaign_id)
code=$(api /v1/links "{\"campaign_id\":\"$campaign\",\"utm\":{\"source\":\"benchnet\"},
  \"destinations\":{\"android\":\"https://play.google.com/store/apps/details?id=com.example\",
  \"ios\":\"https://apps.apple.com/app/id1\",\"web\":\"https://example.com/\"}}" | field code)
ua='Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36'
wrk -t1 -c"${CONN:-8}" -d"${SECS:-10}s" --latency -H "User-Agent: $ua" \
    "http://127.0.0.1:$port/c/$code?gaid=38400000-8cf0-11bd-b23e-10b96e40000d&sub1=bench" > "$work/wrk.out"
sleep 2
kill -INT "$pid"; wait "$pid" || true
pid=
answered=$(awk '/requests in/ {print $1}' "$work/wrk.out")
stored=$(python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM clicks").fetchone()[0])' "$work/t.db")
rate=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out")
p50=$(awk '$1 == "50%" {print $2}' "$work/wrk.out")
p99=$(awk '$1 == "99%" {print $2}' "$work/wrk.out")
grep -E 'Non-2xx|Socket errors' "$work/wrk.out" || true
echo "wrk-clicks: connections=${CONN:-8} rate=$rate p50=$p50 p99=$p99 answered=$answered stored=$stored"
