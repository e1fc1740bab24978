#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind (repeatable, whatever else
# the machine is doing): the release binary's demo mode on one CPU (one worker), a static nginx
# upstream, N keep-alive requests with a valid RS256 token, minus the same run with none. Only
# the threads other than the main one are counted (the worker and the log writer): the demo's
# issuer makes a fresh RSA key on the main thread at start-up, whose cost varies from run to
# run. Needs valgrind, nginx and python3 (apt-get install valgrind nginx).
#   usage: benches/callgrind.sh [requests=2000] [binary=target/release/portcullis]
#   MODE=forward-auth: the same token in forward-auth checks (GET /oauth2/auth naming the
#   original request in nginx's dialect, as nginx's auth_request sends it) instead of proxied
#   requests; nothing reaches the app.
#   MODE=session: a browser session (a cookie from signing in as alice at the demo's issuer,
#   in both runs, so the sign-in is subtracted) instead of the token.
#   MODE=redis-session: the same with sessions in a redis-server this script starts (Debian's;
#   its own instructions are not counted), and the Redis commands per request counted.
#   MODE=nginx: the baseline, a plain nginx reverse proxy (one process, keep-alive to the same
#   upstream, its access log on, buffered as in load.sh --logs on) counted the same way, sent
#   the same requests with the same token (taken from a demo run of the binary).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}; bin=${2:-target/release/portcullis}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d); pids=()
keep=${KEEP:-}
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cat > "$work/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/error.log warn;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:18281; location / { return 200 "ok\n"; } } }
NGINX
nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)
mode=${MODE:-proxy}; extra=()
if [ "$mode" = nginx ]; then
  cat > "$work/proxy.conf" <<NGINX
worker_processes 1; master_process off; daemon off; pid $work/proxy.pid; error_log $work/proxy-error.log warn;
events { worker_connections 1024; }
http {
  upstream app { server 127.0.0.1:18281; keepalive 16; }
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:18280;
    access_log $work/proxy-access.log combined buffer=64k;
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
  mkdir -p "$work/proxy"
  # the same token portcullis is sent: from a demo run (not measured)
  "$bin" demo --listen 127.0.0.1:18280 --admin-listen 127.0.0.1:18290 --upstream http://127.0.0.1:18281 > "$work/token.log" 2>&1 &
  demo=$!
  for _ in $(seq 600); do grep -q '^  TOKEN=' "$work/token.log" 2>/dev/null && break; sleep 0.1; done
  nginx_token=$(grep -m1 '^  TOKEN=' "$work/token.log" | cut -d= -f2)
  kill -INT "$demo"; wait "$demo" 2>/dev/null || true
fi
if [ "$mode" = redis-session ]; then
  redis-server --bind 127.0.0.1 --port 18282 --save "" --appendonly no --logfile "" > "$work/redis.log" 2>&1 & pids+=($!)
  for _ in $(seq 100); do redis-cli -p 18282 ping >/dev/null 2>&1 && break; sleep 0.1; done
  extra=(--redis redis://127.0.0.1:18282/0); mode=session
fi
commands() { [ ${#extra[@]} -gt 0 ] && redis-cli -p 18282 info stats | awk -F: '/^total_commands_processed/ {print $2+0}' || echo 0; }

count() { # requests -> instructions of the whole run
  local reqs=$1 out="$work/cg.$1" token
  if [ "$mode" = nginx ]; then
    taskset -c 0 valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$out" \
      nginx -c "$work/proxy.conf" -p "$work/proxy" > "$work/p.$reqs.log" 2>&1 &
    for _ in $(seq 600); do python3 -c 'import socket; socket.create_connection(("127.0.0.1", 18280), 1)' 2>/dev/null && break; sleep 0.1; done
    token=$nginx_token
  else
    PORTCULLIS_LOG_LEVEL=${LOG_LEVEL:-info} taskset -c 0 valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$out" \
      "$bin" demo --listen 127.0.0.1:18280 --admin-listen 127.0.0.1:18290 --upstream http://127.0.0.1:18281 \
      "${extra[@]}" > "$work/p.$reqs.log" 2>&1 &
    for _ in $(seq 600); do grep -q '^  TOKEN=' "$work/p.$reqs.log" 2>/dev/null && break; sleep 0.1; done
    token=$(grep -m1 '^  TOKEN=' "$work/p.$reqs.log" | cut -d= -f2)
  fi
  local pid=$!
  local before; before=$(commands)
  python3 - "$reqs" "$token" "$mode" <<'PY'
import http.client, sys
n, token, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", 18280, timeout=60)
path, headers = "/", {"Authorization": "Bearer " + token}
if mode == "session":
    sys.path.insert(0, "benches")
    from signin import sign_in
    headers = {"Cookie": sign_in(18280)}
if mode == "forward-auth":
    path = "/oauth2/auth"
    headers.update({"X-Original-URI": "/", "X-Original-Method": "GET",
                    "X-Forwarded-Host": "app.example.com", "X-Forwarded-Proto": "https"})
for _ in range(n):
    c.request("GET", path, headers=headers)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
    assert mode != "forward-auth" or r.getheader("X-Auth-Request-User") == "alice"
    assert not r.getheader("Set-Cookie"), "a refresh or activity write in the measured requests"
PY
  echo $(( $(commands) - before )) > "$work/commands.$reqs"
  if [ "$mode" = nginx ]; then kill -QUIT "$pid"; else kill -INT "$pid"; fi
  wait "$pid" 2>/dev/null || true
  local total=0
  for f in "$out"-*; do
    case "$f" in *-01) [ "$mode" = nginx ] || continue ;; esac   # portcullis's main thread
    local t; t=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
    total=$((total + ${t:-0}))
  done
  [ -n "$keep" ] && cp "$out"-* "$keep"/ 2>/dev/null || true
  echo "$total"
}
base=$(count 0); full=$(count "$n")
echo "instructions: $full with $n requests, $base with none"
awk -v a="$full" -v b="$base" -v n="$n" 'BEGIN {printf "instructions per proxied request: %.0f\n", (a-b)/n}'
if [ ${#extra[@]} -gt 0 ]; then
  awk -v a="$(cat "$work/commands.$n")" -v b="$(cat "$work/commands.0")" -v n="$n" \
    'BEGIN {printf "Redis commands per request: %.2f\n", (a-b)/n}'
fi
