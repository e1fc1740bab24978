#!/usr/bin/env bash
# Load comparison on loopback: portcullis (validating an RS256 bearer JWT on every request)
# against a plain nginx reverse proxy, both in front of the same nginx `return 200` upstream.
# Runs are interleaved; medians and the ratio are printed. Needs nginx and wrk (apt-get install
# nginx wrk) and the release binary (cargo build --release).
#   usage: benches/load.sh [rounds=5] [seconds=10] [connections=64]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}; secs=${2:-10}; conns=${3:-64}
bin=target/release/portcullis
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/nginx.conf" <<NGINX
worker_processes auto;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream app { server 127.0.0.1:18081; keepalive 128; }
  server { listen 127.0.0.1:18081; location / { return 200 "ok\n"; } }
  server {
    listen 127.0.0.1:18082;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)

"$bin" demo --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:18090 --upstream http://127.0.0.1:18081 > "$work/portcullis.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do grep -q '^  TOKEN=' "$work/portcullis.log" 2>/dev/null && break; sleep 0.1; done
token=$(grep -m1 '^  TOKEN=' "$work/portcullis.log" | cut -d= -f2)
[ -n "$token" ] || { echo "portcullis demo did not start"; cat "$work/portcullis.log"; exit 1; }
curl -fsS -o /dev/null -H "Authorization: Bearer $token" http://127.0.0.1:18080/ || { echo "portcullis refused the token"; exit 1; }
curl -fsS -o /dev/null http://127.0.0.1:18082/

run() { # url -> "rps p99_ms"
  wrk -t2 -c"$conns" -d"${secs}s" --latency -H "Authorization: Bearer $token" "$1" > "$work/wrk.out"
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' "$work/wrk.out")
  if grep -q "Non-2xx" "$work/wrk.out"; then echo "non-2xx answers from $1" >&2; grep "Non-2xx" "$work/wrk.out" >&2; fi
  echo "$rps $p99"
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# warm-up
wrk -t2 -c"$conns" -d2s -H "Authorization: Bearer $token" http://127.0.0.1:18082/ >/dev/null
wrk -t2 -c"$conns" -d2s -H "Authorization: Bearer $token" http://127.0.0.1:18080/ >/dev/null
: > "$work/nginx.txt"; : > "$work/portcullis.txt"
for i in $(seq "$rounds"); do
  run http://127.0.0.1:18082/ >> "$work/nginx.txt"
  run http://127.0.0.1:18080/ >> "$work/portcullis.txt"
  echo "round $i: nginx $(tail -1 "$work/nginx.txt")  portcullis $(tail -1 "$work/portcullis.txt")  (req/s p99_ms)"
done
n_rps=$(cut -d' ' -f1 "$work/nginx.txt" | median); p_rps=$(cut -d' ' -f1 "$work/portcullis.txt" | median)
n_p99=$(cut -d' ' -f2 "$work/nginx.txt" | median); p_p99=$(cut -d' ' -f2 "$work/portcullis.txt" | median)
rss=$(ps -o rss= -p "$(pgrep -f "$bin demo --listen 127.0.0.1:18080" | head -1)" 2>/dev/null || echo 0)
echo
echo "median of $rounds interleaved runs, wrk -t2 -c$conns -d${secs}s, everything on 2 shared cores:"
echo "  nginx proxy      $n_rps req/s   p99 ${n_p99} ms"
echo "  portcullis       $p_rps req/s   p99 ${p_p99} ms   (RS256 bearer JWT on every request; access log on)"
awk -v p="$p_rps" -v n="$n_rps" 'BEGIN {printf "  throughput ratio portcullis/nginx: %.2f\n", p/n}'
echo "  portcullis RSS after the runs: $((rss / 1024)) MiB"
