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

count() { # requests -> instructions of the whole run
  local reqs=$1 out="$work/cg.$1"
  PORTCULLIS_LOG_LEVEL=${LOG_LEVEL:-info} taskset -c 0 valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$out" \
    "$bin" demo --listen 127.0.0.1:18280 --admin-listen 127.0.0.1:18290 --upstream http://127.0.0.1:18281 \
    > "$work/p.$reqs.log" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do grep -q '^  TOKEN=' "$work/p.$reqs.log" 2>/dev/null && break; sleep 0.1; done
  local token; token=$(grep -m1 '^  TOKEN=' "$work/p.$reqs.log" | cut -d= -f2)
  python3 - "$reqs" "$token" "${MODE:-proxy}" <<'PY'
import http.client, sys
n, token, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", 18280, timeout=60)
path, headers = "/", {"Authorization": "Bearer " + token}
if mode == "session":
    # sign in as a browser would: start, the issuer's form, the callback; keep the cookies
    import urllib.parse
    jar = {}
    def take(r):
        for k, v in r.getheaders():
            if k.lower() == "set-cookie":
                name, _, rest = v.partition("=")
                jar[name] = rest.split(";")[0]
    def cookie():
        return "; ".join(f"{k}={v}" for k, v in jar.items())
    nav = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate", "Host": "127.0.0.1:18280"}
    c.request("GET", "/oauth2/start?rd=%2F", headers=nav)
    r = c.getresponse(); r.read(); take(r)
    authorize = urllib.parse.urlsplit(r.getheader("Location"))
    form = urllib.parse.parse_qsl(authorize.query) + [("user", "alice")]
    i = http.client.HTTPConnection(authorize.hostname, authorize.port, timeout=60)
    i.request("POST", "/authorize", body=urllib.parse.urlencode(form),
              headers={"Content-Type": "application/x-www-form-urlencoded"})
    r = i.getresponse(); r.read()
    back = urllib.parse.urlsplit(r.getheader("Location"))
    c.request("GET", back.path + "?" + back.query, headers=dict(nav, Cookie=cookie()))
    r = c.getresponse(); r.read(); take(r)
    assert r.status == 302 and any(k.startswith("_portcullis") for k in jar), (r.status, jar)
    headers = {"Cookie": cookie()}
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
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  local total=0
  for f in "$out"-*; do
    case "$f" in *-01) continue ;; esac   # the main thread
    local t; t=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
    total=$((total + ${t:-0}))
  done
  [ -n "$keep" ] && cp "$out"-* "$keep"/ 2>/dev/null || true
  echo "$total"
}
base=$(count 0); full=$(count "$n")
echo "instructions: $full with $n requests, $base with none"
awk -v a="$full" -v b="$base" -v n="$n" 'BEGIN {printf "instructions per proxied request: %.0f\n", (a-b)/n}'
