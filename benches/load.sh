#!/usr/bin/env bash
# Load comparison on loopback: portcullis (verifying an RS256 bearer JWT on every request)
# against a plain nginx reverse proxy (no authentication), both in front of the same nginx
# `return 200` app, like for like: the same client, the same number of workers (2), access logs
# on in both or off in both. Rounds are interleaved (nginx, portcullis, nginx, ...); the ratio is
# the median of each round's portcullis/nginx ratio. CPU time per request comes from /proc
# (user + system of every process of each proxy); peak RSS from VmHWM.
#
# Needs nginx, wrk and h2load (apt-get install nginx wrk nghttp2-client) and the release binary
# (cargo build --release).
#
#   usage: [PORTCULLIS_BIN=...] benches/load.sh [--rounds 5] [--secs 10] [--conns 64] [--logs on|off] [--tokens 1]
#                          [--h2]
#     --conns 16,64,256   a sweep: one table row per count
#     --tokens 1000       rotate over that many distinct valid tokens (a wrk Lua script, used
#                         for both proxies)
#     --logs on           nginx `access_log ... buffer=64k` to a file; portcullis its default
#                         access line to a file. off: no access log in either.
#     --h2                HTTP/2 with prior knowledge (h2load -m 10): nginx `http2` proxy
#                         against portcullis's h2c
#     --forward-auth      nginx with auth_request asking portcullis (/oauth2/auth, nginx's
#                         dialect, keep-alive) in front of the app, against the plain nginx
#                         proxy; CPU counts portcullis and that nginx together
#     --sessions          portcullis against itself: the bearer token, a cookie session and a
#                         Redis session (a second demo with --redis, a redis-server this script
#                         starts on the same two cores), interleaved; ratios against the bearer
#                         run, Redis's CPU and commands per request reported (needs redis-server)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
rounds=5 secs=10 conns=64 logs=off tokens=1 h2=0 fa=0 sessions=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --secs) secs=$2; shift 2 ;;
    --conns) conns=$2; shift 2 ;;
    --logs) logs=$2; shift 2 ;;
    --tokens) tokens=$2; shift 2 ;;
    --h2) h2=1; shift ;;
    --forward-auth) fa=1; shift ;;
    --sessions) sessions=1; shift ;;
    *) echo "unknown option $1 (see the head of $0)" >&2; exit 2 ;;
  esac
done
case "$logs" in on|off) ;; *) echo "--logs on|off" >&2; exit 2 ;; esac
bin=${PORTCULLIS_BIN:-target/release/portcullis}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "needs nginx and wrk" >&2; exit 1; }
[ "$h2" = 0 ] || command -v h2load >/dev/null || { echo "needs h2load (nghttp2-client)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

if [ "$logs" = on ]; then
  nginx_log="access_log $work/nginx-access.log combined buffer=64k;"
  p_level=info
else
  nginx_log="access_log off;"
  p_level=warn
fi
h2flag=""; [ "$h2" = 1 ] && h2flag="http2"
# the app: its own nginx, the same for both proxies, never logging
{ nginx_main "$work" app; cat <<NGINX; } > "$work/app.conf"
http { access_log off; server { listen 127.0.0.1:18081; location / { return 200 "ok\n"; } } }
NGINX
mkdir -p "$work/app" "$work/proxy"
nginx -c "$work/app.conf" -p "$work/app" & pids+=($!)
# how both nginx proxies forward to the app (keep-alive, like portcullis)
to_app='      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;'
# the plain reverse proxy, as a user would set it up in portcullis's place
{ nginx_main "$work" nginx; cat <<NGINX; } > "$work/nginx.conf"
http {
  upstream app { server 127.0.0.1:18081; keepalive 128; }
  # no cap on requests per client connection (nginx's default closes it after 1,000;
  # portcullis has none), so both serve the same connections
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:18082 $h2flag;
    $nginx_log
    location / {
$to_app
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work/proxy" & pids+=($!)
# --forward-auth: the same nginx proxy asking portcullis first (docs/forward-auth.md's snippet)
if [ "$fa" = 1 ]; then
  mkdir -p "$work/fa"
  { nginx_main "$work" fa; cat <<NGINX; } > "$work/fa.conf"
http {
  upstream app { server 127.0.0.1:18081; keepalive 128; }
  upstream portcullis { server 127.0.0.1:18080; keepalive 128; }
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:18083;
    $nginx_log
    location = /oauth2/auth {
      internal;
      proxy_pass http://portcullis;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI \$request_uri;
      proxy_set_header X-Original-Method \$request_method;
      proxy_set_header X-Forwarded-Host \$http_host;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
    location / {
      auth_request /oauth2/auth;
      auth_request_set \$auth_user \$upstream_http_x_auth_request_user;
      proxy_set_header X-Forwarded-User \$auth_user;
$to_app
    }
  }
}
NGINX
  nginx -c "$work/fa.conf" -p "$work/fa" & pids+=($!)
fi

PORTCULLIS_LOG_LEVEL=$p_level "$bin" demo --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:18090 \
  --upstream http://127.0.0.1:18081 > "$work/portcullis.log" 2>&1 & ppid=$!; pids+=($ppid)
# the demo prints its token and issuer whatever the level (to stdout, before logging starts)
for _ in $(seq 100); do grep -q '^  TOKEN=' "$work/portcullis.log" 2>/dev/null && break; sleep 0.1; done
token=$(grep -m1 '^  TOKEN=' "$work/portcullis.log" | cut -d= -f2)
issuer=$(grep -m1 -o "http://127.0.0.1:[0-9]*/dev/token" "$work/portcullis.log" | sed 's|/dev/token||')
[ -n "$token" ] || { echo "portcullis demo did not start"; cat "$work/portcullis.log"; exit 1; }
curl -fsS -o /dev/null -H "Authorization: Bearer $token" http://127.0.0.1:18080/ || { echo "portcullis refused the token"; exit 1; }
for _ in $(seq 50); do curl -fsS -o /dev/null http://127.0.0.1:18081/ 2>/dev/null && break; sleep 0.1; done

# --tokens N: N distinct tokens (one subject each) from the demo's issuer, rotated per request
: > "$work/tokens"
if [ "$tokens" -gt 1 ]; then
  python3 - "$issuer" "$tokens" > "$work/tokens" <<'PY'
import http.client, sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
for i in range(int(sys.argv[2])):
    c.request("GET", f"/dev/token?user=bench-{i}")
    r = c.getresponse(); t = r.read().decode()
    assert r.status == 200, r.status
    print(t)
PY
  cat > "$work/tokens.lua" <<LUA
local tokens = {}
for line in io.lines("$work/tokens") do tokens[#tokens + 1] = line end
local i = math.random(#tokens)
request = function()
  i = i % #tokens + 1
  return wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. tokens[i] })
end
LUA
  wrk_auth=(-s "$work/tokens.lua")
else
  wrk_auth=(-H "Authorization: Bearer $token")
fi

proc_pids() { # proxy -> its pids
  if [ "$1" = nginx ]; then
    echo "$(cat "$work/nginx.pid") $(pgrep -P "$(cat "$work/nginx.pid")" | tr '\n' ' ')"
  elif [ "$1" = redis ]; then
    echo "$rpid"
  elif [ "$1" = portcullis-redis ]; then
    echo "$ppid_redis"
  elif [ "$fa" = 1 ]; then
    echo "$ppid $(cat "$work/fa.pid") $(pgrep -P "$(cat "$work/fa.pid")" | tr '\n' ' ')"
  else
    echo "$ppid"
  fi
}
cpu_ticks() { # proxy -> "user system" clock ticks, all its processes
  local u=0 s=0
  for p in $(proc_pids "$1"); do
    read -r pu ps < <(awk '{print $14, $15}' "/proc/$p/stat"); u=$((u + pu)); s=$((s + ps))
  done
  echo "$u $s"
}
hwm_kib() { local t=0; for p in $(proc_pids "$1"); do t=$((t + $(awk '/VmHWM/ {print $2}' "/proc/$p/status"))); done; echo "$t"; }
hz=$(getconf CLK_TCK)

run() { # proxy url conns -> "rps p50_ms p99_ms cpu_us_per_request user_us system_us"
  local proxy=$1 url=$2 c=$3 before after reqs rps p50 p99
  before=$(cpu_ticks "$proxy")
  if [ "$h2" = 1 ]; then
    local hdr=()
    [ "$tokens" -gt 1 ] && echo "note: --h2 uses the first token only" >&2
    hdr=(-H "Authorization: Bearer $token")
    h2load -D "$secs" -c "$c" -m 10 -t 2 "${hdr[@]}" "$url" > "$work/load.out" 2>&1
    reqs=$(awk '/^requests:/ {print $8}' "$work/load.out")
    rps=$(awk '/^finished in/ {gsub(",","",$4); print $4}' "$work/load.out")
    # h2load gives the mean and sd of request times, not percentiles
    p50=$(awk '/^time for request:/ {v=$5; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else {sub(/ms/,"",v)}; print v}' "$work/load.out")
    p99=-
    if ! grep -q "^status codes: [0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx" "$work/load.out"; then
      echo "non-2xx answers from $url" >&2; grep "^status codes" "$work/load.out" >&2
    fi
  else
    wrk -t2 -c"$c" -d"${secs}s" --latency "${wrk_auth[@]}" "$url" > "$work/load.out"
    reqs=$(awk '/requests in/ {print $1}' "$work/load.out")
    rps=$(awk '/Requests\/sec/ {print $2}' "$work/load.out")
    ms() { awk -v k="$1" '$1==k {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' "$work/load.out"; }
    p50=$(ms 50%); p99=$(ms 99%)
    if grep -q "Non-2xx" "$work/load.out"; then echo "non-2xx answers from $url" >&2; grep "Non-2xx" "$work/load.out" >&2; fi
  fi
  after=$(cpu_ticks "$proxy")
  awk -v r="$rps" -v a="$p50" -v b="$p99" -v before="$before" -v after="$after" -v n="$reqs" -v hz="$hz" \
    'BEGIN {split(before, x, " "); split(after, y, " "); u = (y[1] - x[1]) / hz / n * 1e6; s = (y[2] - x[2]) / hz / n * 1e6;
            printf "%s %s %s %.1f %.1f %.1f\n", r, a, b, u + s, u, s}'
}

if [ "$sessions" = 1 ]; then
  [ "$h2" = 0 ] && [ "$fa" = 0 ] && [ "$tokens" = 1 ] || { echo "--sessions is HTTP/1.1 with one token" >&2; exit 2; }
  command -v redis-server >/dev/null || { echo "needs redis-server" >&2; exit 1; }
  redis-server --bind 127.0.0.1 --port 18084 --save "" --appendonly no --logfile "" > "$work/redis.log" 2>&1 & rpid=$!; pids+=($rpid)
  for _ in $(seq 100); do redis-cli -p 18084 ping >/dev/null 2>&1 && break; sleep 0.1; done
  PORTCULLIS_LOG_LEVEL=$p_level "$bin" demo --listen 127.0.0.1:18085 --admin-listen 127.0.0.1:18095 \
    --upstream http://127.0.0.1:18081 --redis redis://127.0.0.1:18084/0 > "$work/portcullis-redis.log" 2>&1 & ppid_redis=$!; pids+=($ppid_redis)
  for _ in $(seq 100); do curl -fsS -o /dev/null http://127.0.0.1:18095/healthz 2>/dev/null && break; sleep 0.1; done
  cookie_session=$(python3 benches/signin.py 18080)
  redis_session=$(python3 benches/signin.py 18085)
  commands() { redis-cli -p 18084 info stats | awk -F: '/^total_commands_processed/ {print $2+0}'; }
  # kind -> "proxy url" and its wrk headers
  pick() {
    case "$1" in
      bearer) target="portcullis http://127.0.0.1:18080/"; wrk_auth=(-H "Authorization: Bearer $token") ;;
      cookie) target="portcullis http://127.0.0.1:18080/"; wrk_auth=(-H "Cookie: $cookie_session") ;;
      redis) target="portcullis-redis http://127.0.0.1:18085/"; wrk_auth=(-H "Cookie: $redis_session") ;;
    esac
  }
  echo "portcullis with a bearer token, a cookie session and a Redis session: HTTP/1.1, $rounds interleaved rounds of ${secs}s, $conns connections, access log $logs"
  echo "(Redis on the same two cores; its CPU is counted apart, and in the total)"
  echo
  for k in bearer cookie redis; do pick "$k"; run ${target% *} "${target#* }" "$conns" > /dev/null; done
  for k in bearer cookie redis; do : > "$work/$k.txt"; done
  : > "$work/cookie.ratio"; : > "$work/redis.ratio"; : > "$work/redis.cmds"; : > "$work/redis.cpu"
  for i in $(seq "$rounds"); do
    for k in bearer cookie redis; do
      pick "$k"
      if [ "$k" = redis ]; then c0=$(commands); r0=$(cpu_ticks redis); fi
      out=$(run ${target% *} "${target#* }" "$conns"); echo "$out" >> "$work/$k.txt"
      if [ "$k" = redis ]; then
        reqs=$(awk '/requests in/ {print $1}' "$work/load.out")
        awk -v a="$(commands)" -v b="$c0" -v n="$reqs" 'BEGIN {printf "%.3f\n", (a-b)/n}' >> "$work/redis.cmds"
        r1=$(cpu_ticks redis)
        awk -v before="$r0" -v after="$r1" -v n="$reqs" -v hz="$hz" \
          'BEGIN {split(before, x, " "); split(after, y, " "); printf "%.1f\n", (y[1]+y[2]-x[1]-x[2]) / hz / n * 1e6}' >> "$work/redis.cpu"
      fi
      echo "  round $i $k: $out (req/s p50_ms p99_ms cpu_us user_us sys_us)" >&2
    done
    b=$(tail -1 "$work/bearer.txt" | cut -d' ' -f1)
    for k in cookie redis; do
      awk -v p="$(tail -1 "$work/$k.txt" | cut -d' ' -f1)" -v n="$b" 'BEGIN {printf "%.4f\n", p/n}' >> "$work/$k.ratio"
    done
  done
  col() { cut -d' ' -f"$2" "$work/$1.txt" | median; }
  printf '%-16s | %-26s | %-22s | %s\n' session "req/s (p50/p99 ms)" "vs bearer (range)" "CPU µs/req (user+sys)"
  for k in bearer cookie redis; do
    ratio="1.00×"
    [ "$k" = bearer ] || ratio="$(median < "$work/$k.ratio" | awk '{printf "%.2f", $1}')× ($(range < "$work/$k.ratio"))"
    extra=""
    [ "$k" = redis ] && extra=" + Redis $(median < "$work/redis.cpu") = $(awk -v a="$(col redis 4)" -v b="$(median < "$work/redis.cpu")" 'BEGIN {printf "%.1f", a+b}')"
    printf '%-16s | %-26s | %-22s | %s%s\n' "$k" "$(col "$k" 1) ($(col "$k" 2)/$(col "$k" 3))" "$ratio" "$(col "$k" 4)" "$extra"
  done
  echo
  echo "Redis commands per request: $(median < "$work/redis.cmds")"
  exit 0
fi

proto=HTTP/1.1; [ "$h2" = 1 ] && proto="HTTP/2 (h2c, h2load -m 10)"
p_url=http://127.0.0.1:18080/
if [ "$fa" = 1 ]; then
  [ "$h2" = 0 ] || { echo "--forward-auth is HTTP/1.1 only" >&2; exit 2; }
  for _ in $(seq 50); do curl -fsS -o /dev/null -H "Authorization: Bearer $token" http://127.0.0.1:18083/ 2>/dev/null && break; sleep 0.1; done
  p_url=http://127.0.0.1:18083/
  proto="HTTP/1.1, forward-auth: \"portcullis\" is nginx auth_request asking portcullis"
fi
echo "portcullis against a plain nginx proxy: $proto, $rounds interleaved rounds of ${secs}s, access logs $logs in both, $tokens token(s)"
echo
lat="p50/p99 ms"; [ "$h2" = 1 ] && lat="mean ms"
printf '%-6s | %-24s | %-24s | %-19s | %-14s | %s\n' conns "nginx req/s ($lat)" "portcullis req/s" "ratio (range)" "p99 over nginx" "CPU µs/req, user+sys: nginx / portcullis"
IFS=, read -r -a sweep <<< "$conns"
for c in "${sweep[@]}"; do
  # warm-up, both
  run nginx http://127.0.0.1:18082/ "$c" > /dev/null
  run portcullis "$p_url" "$c" > /dev/null
  : > "$work/n.txt"; : > "$work/p.txt"; : > "$work/ratio.txt"
  for i in $(seq "$rounds"); do
    n=$(run nginx http://127.0.0.1:18082/ "$c"); p=$(run portcullis "$p_url" "$c")
    echo "$n" >> "$work/n.txt"; echo "$p" >> "$work/p.txt"
    awk -v p="${p%% *}" -v n="${n%% *}" 'BEGIN {printf "%.4f\n", p/n}' >> "$work/ratio.txt"
    echo "  c=$c round $i: nginx $n  portcullis $p  (req/s p50_ms p99_ms cpu_us user_us sys_us)" >&2
  done
  col() { cut -d' ' -f"$2" "$work/$1.txt" | median; }
  n_p99=$(col n 3); p_p99=$(col p 3)
  over=$(awk -v a="$p_p99" -v b="$n_p99" 'BEGIN {if (a == "-" || b == "-") print "-"; else printf "%+.2f ms", a - b}')
  lat_n="$(col n 2)/$n_p99"; lat_p="$(col p 2)/$p_p99"
  [ "$h2" = 1 ] && { lat_n=$(col n 2); lat_p=$(col p 2); }
  printf '%-6s | %-24s | %-24s | %-19s | %-14s | %s (%s+%s) / %s (%s+%s)\n' "$c" \
    "$(col n 1) ($lat_n)" "$(col p 1) ($lat_p)" \
    "$(median < "$work/ratio.txt" | awk '{printf "%.2f", $1}')× ($(range < "$work/ratio.txt"))" "$over" \
    "$(col n 4)" "$(col n 5)" "$(col n 6)" "$(col p 4)" "$(col p 5)" "$(col p 6)"
done
echo
echo "peak RSS: nginx (master + workers) $(( $(hwm_kib nginx) / 1024 )) MiB, portcullis $(( $(hwm_kib portcullis) / 1024 )) MiB"
[ "$logs" = on ] && echo "access lines written (nginx's last 64 KiB may still be buffered): nginx $(wc -l < "$work/nginx-access.log"), portcullis $(grep -c 'portcullis::access' "$work/portcullis.log")"
exit 0
