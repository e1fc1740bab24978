#!/usr/bin/env bash
# WebSocket comparison on loopback: portcullis (the upgrade authenticated with an RS256 bearer
# JWT, then the two connections spliced) against a plain nginx WebSocket proxy (no
# authentication), both in front of the same WebSocket echo app (benches/ws.rs). Two figures:
#   messages    64 open WebSockets, each echoing a 32-byte message at a time: messages/s
#   handshakes  64 clients, each connecting, upgrading, echoing one message and closing, again
#               and again: WebSockets/s (the handshake through the proxy is most of it)
# Rounds are interleaved (nginx, portcullis[, base]); each ratio is the median of the rounds'
# ratios against nginx. No access log in either.
#
# Needs nginx (apt-get install nginx) and the release binary (cargo build --release).
#   usage: [PORTCULLIS_BIN=...] [BASE_BIN=...] benches/ws.sh [--rounds 5] [--secs 5] [--conns 64]
#     BASE_BIN  another portcullis binary (an earlier build) measured beside, the same way
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
rounds=5 secs=5 conns=64
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --secs) secs=$2; shift 2 ;;
    --conns) conns=$2; shift 2 ;;
    *) echo "unknown option $1 (see the head of $0)" >&2; exit 2 ;;
  esac
done
bin=${PORTCULLIS_BIN:-target/release/portcullis}
base=${BASE_BIN:-}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -z "$base" ] || [ -x "$base" ] || { echo "BASE_BIN $base is not an executable" >&2; exit 1; }
command -v nginx >/dev/null || { echo "needs nginx" >&2; exit 1; }
# the client and echo app, built as the bench profile builds them
ws=$(cargo build --release --bench ws --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "ws" and m.get("executable"):
        print(m["executable"])')
[ -x "$ws" ] || { echo "could not build benches/ws.rs" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$ws" echo 127.0.0.1:18481 & pids+=($!)
mkdir -p "$work/proxy"
{ nginx_main "$work" nginx; cat <<NGINX; } > "$work/nginx.conf"
http {
  access_log off;
  server {
    listen 127.0.0.1:18482;
    location / {
      proxy_pass http://127.0.0.1:18481;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_read_timeout 1h;
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work/proxy" & pids+=($!)

# a demo (its own issuer and token) of binary $1 on port $2, started here (so that cleanup
# stops it); its token is read with token_of
demo() {
  PORTCULLIS_LOG_LEVEL=warn "$1" demo --listen "127.0.0.1:$2" --admin-listen "127.0.0.1:$(($2 + 10))" \
    --upstream http://127.0.0.1:18481 > "$work/demo-$2.log" 2>&1 & pids+=($!)
}
token_of() {
  for _ in $(seq 300); do grep -q '^  TOKEN=' "$work/demo-$1.log" 2>/dev/null && break; sleep 0.1; done
  grep -m1 '^  TOKEN=' "$work/demo-$1.log" | cut -d= -f2 || { echo "the demo on $1 did not start" >&2; cat "$work/demo-$1.log" >&2; exit 1; }
}
targets=(nginx portcullis)
declare -A url=([nginx]=ws://127.0.0.1:18482/ [portcullis]=ws://127.0.0.1:18480/)
declare -A token=([nginx]=-)
demo "$bin" 18480
if [ -n "$base" ]; then
  targets+=(base)
  url[base]=ws://127.0.0.1:18483/
  demo "$base" 18483
  token[base]=$(token_of 18483)
fi
token[portcullis]=$(token_of 18480)
# each answers a WebSocket before the rounds begin
for t in "${targets[@]}"; do
  for _ in $(seq 50); do "$ws" messages "${url[$t]}" "${token[$t]}" 1 0.05 >/dev/null 2>&1 && break; sleep 0.1; done
  "$ws" messages "${url[$t]}" "${token[$t]}" 1 0.05 >/dev/null || { echo "$t does not echo"; exit 1; }
done

echo "WebSocket, $conns clients, $rounds interleaved rounds of ${secs} s each (per second; ratio: median of the rounds' ratios to nginx)"
printf '%-11s | %-12s | %s\n' load target "per second (ratio to nginx, range)"
for load in messages handshakes; do
  for t in "${targets[@]}"; do : > "$work/$load-$t"; : > "$work/$load-$t.ratio"; done
  for r in $(seq "$rounds"); do
    for t in "${targets[@]}"; do
      n=$("$ws" "$load" "${url[$t]}" "${token[$t]}" "$conns" "$secs")
      echo "$n $secs" | awk '{printf "%.0f\n", $1 / $2}' >> "$work/$load-$t"
    done
    nginx_rate=$(tail -1 "$work/$load-nginx")
    for t in "${targets[@]}"; do
      awk -v p="$(tail -1 "$work/$load-$t")" -v n="$nginx_rate" 'BEGIN {printf "%.4f\n", p/n}' >> "$work/$load-$t.ratio"
    done
  done
  for t in "${targets[@]}"; do
    printf '%-11s | %-12s | %s (%.2f×, %s)\n' "$load" "$t" "$(median < "$work/$load-$t")" \
      "$(median < "$work/$load-$t.ratio")" "$(range < "$work/$load-$t.ratio")"
  done
done
