#!/usr/bin/env bash
# Plain HTTP/1.1 pass-through, side by side in one run: switchyard (a `proxy:` route), a bare
# pingora proxy (examples/pingora_bare.rs: pingora's own cost, without switchyard's layers) and
# nginx as a proxy (keep-alive upstream pool, bodies kept in memory) and haproxy (when installed;
# server-side connection reuse, `http-reuse always`), all in front of one nginx
# that answers `200 ok`. Proxies and the answering nginx share the server cores, wrk runs on
# its own core. Each round runs every proxy once, in an order that alternates between rounds;
# the verdict is the median of the rounds and its ratio to nginx's.
#
#   bench/http.sh                              # GET and 16 KiB POST, 5 rounds of 6 s, 64 conns
#   ROUNDS=3 SECONDS_PER_RUN=10 CONNECTIONS=1000 bench/http.sh
#   THREADS=2 SERVER_CPUS=0,1 LOAD_CPUS=0,1 bench/http.sh   # two threads / two workers
#   BARE_RUNTIME=nosteal bench/http.sh            # the bare pingora without work stealing
#   MODES=get bench/http.sh
#   OTHER_BIN=/path/to/older/switchyard bench/http.sh   # another build in the same run ("other")
#   RESULTS=results.txt bench/http.sh             # also append each median as "http ..." + JSON
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-6}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
SERVER_CPUS=${SERVER_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
MODES=${MODES:-get post}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx is needed: apt-get install nginx" >&2; exit 1; }
cargo build --release --locked --quiet --bin switchyard --example pingora_bare
BIN=target/release/switchyard
BARE=target/release/examples/pingora_bare

WORK=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
ulimit -n 19000 2>/dev/null || true

temp_paths() { for t in client_body proxy fastcgi uwsgi scgi; do echo "  ${t}_temp_path $1;"; done; }
mkdir -p "$WORK/answer" "$WORK/proxy"
cat >"$WORK/answer/nginx.conf" <<EOF
worker_processes $THREADS;
pid $WORK/answer/nginx.pid;
error_log $WORK/answer/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
$(temp_paths "$WORK/answer")
  client_body_buffer_size 128k;
  keepalive_requests 100000;
  server { listen 127.0.0.1:8190; location / { return 200 "ok"; } }
}
EOF
cat >"$WORK/proxy/nginx.conf" <<EOF
worker_processes $THREADS;
pid $WORK/proxy/nginx.pid;
error_log $WORK/proxy/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
$(temp_paths "$WORK/proxy")
  client_body_buffer_size 128k;
  keepalive_requests 100000;
  upstream answer { server 127.0.0.1:8190; keepalive 1024; }
  server { listen 127.0.0.1:8193;
    location / { proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://answer; } }
}
EOF
taskset -c "$SERVER_CPUS" nginx -c "$WORK/answer/nginx.conf" -g 'daemon off;' >"$WORK/answer/out.log" 2>&1 &
PIDS+=($!)
taskset -c "$SERVER_CPUS" nginx -c "$WORK/proxy/nginx.conf" -g 'daemon off;' >"$WORK/proxy/out.log" 2>&1 &
PIDS+=($!); NGINX_PID=$!
cat >"$WORK/switchyard.yaml" <<EOF
# switchyard: HTTP pass-through benchmark
server:
  listen:
    - addr: "127.0.0.1:8191"
  admin: "127.0.0.1:8291"
  threads: $THREADS
  shutdown_grace: 1s
routes:
  - name: api
    path: /
    proxy: { upstreams: ["127.0.0.1:8190"] }
EOF
taskset -c "$SERVER_CPUS" "$BIN" --config "$WORK/switchyard.yaml" --log-level warn >"$WORK/switchyard.out" 2>&1 &
PIDS+=($!); SY_PID=$!
taskset -c "$SERVER_CPUS" "$BARE" 127.0.0.1:8195 127.0.0.1:8190 "$THREADS" "${BARE_RUNTIME:-steal}" >"$WORK/bare.out" 2>&1 &
PIDS+=($!); BARE_PID=$!
names=(switchyard pingora nginx)
ports=(8191 8195 8193)
pids=("$SY_PID" "$BARE_PID" "$NGINX_PID")
if command -v haproxy >/dev/null; then
  cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread $THREADS
  maxconn 9000
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:8194
  default_backend be
backend be
  server answer 127.0.0.1:8190
EOF
  taskset -c "$SERVER_CPUS" haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.out" 2>&1 &
  PIDS+=($!)
  names+=(haproxy); ports+=(8194); pids+=($!)
fi
if [ -n "${OTHER_BIN:-}" ]; then
  sed -e 's/127.0.0.1:8191/127.0.0.1:8196/' -e 's/127.0.0.1:8291/127.0.0.1:8296/' "$WORK/switchyard.yaml" >"$WORK/other.yaml"
  taskset -c "$SERVER_CPUS" "$OTHER_BIN" --config "$WORK/other.yaml" --log-level warn >"$WORK/other.out" 2>&1 &
  PIDS+=($!)
  names+=(other); ports+=(8196); pids+=($!)
fi
for port in "${ports[@]}" 8190; do
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "http://127.0.0.1:$port/" >/dev/null || { echo "port $port does not answer" >&2; exit 1; }
done

cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 16384)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA

# CPU time (user + system, clock ticks) of a server's processes: the listener's own and its
# children's (nginx's workers).
cpu_ticks() {
  local pids
  pids=$(pgrep -d' ' -P "$1" 2>/dev/null || true)
  # shellcheck disable=SC2086
  for p in $1 $pids; do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null; done | awk '{t += $1} END {print t + 0}'
}
run() { # port pid mode -> "requests/s p99_ms errors cpu_us_per_request"
  local script=() before after
  [ "$3" = post ] && script=(-s "$WORK/post.lua")
  before=$(cpu_ticks "$2")
  taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "${script[@]}" "http://127.0.0.1:$1/" >"$WORK/wrk.out"
  after=$(cpu_ticks "$2")
  awk -v ticks="$((after - before))" -v hz="$(getconf CLK_TCK)" '
    /requests in/ {n=$1} /Requests\/sec/ {r=$2} /Non-2xx/ {bad=$NF} /Socket errors/ {bad=bad"+sock"}
    /^ *99%/ {p=$2; if (p ~ /us$/) {sub(/us$/,"",p); p/=1000} else if (p ~ /ms$/) {sub(/ms$/,"",p)} else if (p ~ /s$/) {sub(/s$/,"",p); p*=1000}}
    END {printf "%s %.2f %s %.1f\n", r, p, (bad == "" ? 0 : bad), (n > 0 ? ticks / hz * 1e6 / n : 0)}' "$WORK/wrk.out"
}
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }

last=$((${#names[@]} - 1))
echo "HTTP/1.1 pass-through: $CONNECTIONS connections, $THREADS thread(s)/worker(s) on cpu $SERVER_CPUS, wrk on cpu $LOAD_CPUS, $ROUNDS rounds of ${SECONDS_PER_RUN}s"
echo "(CPU: the proxy's own user + system time per request; the answering nginx is not counted)"
for mode in $MODES; do
  rps=(); p99=(); cpu=()
  for i in $(seq "$ROUNDS"); do
    order=($(seq 0 "$last"))
    ((i % 2)) || order=($(seq "$last" -1 0))
    line="round $i ($mode):"
    for k in "${order[@]}"; do
      read -r r p bad c < <(run "${ports[$k]}" "${pids[$k]}" "$mode")
      rps[k]+="$r "; p99[k]+="$p "; cpu[k]+="$c "
      line+=" ${names[$k]} $r req/s p99 ${p}ms ${c}us CPU"
      [ "$bad" != 0 ] && line+=" (non-2xx/errors: $bad)"
      line+=";"
    done
    echo "$line"
  done
  # shellcheck disable=SC2086
  n_r=$(median ${rps[2]}); n_p=$(median ${p99[2]})
  printf '%-6s %-11s %10s %9s %9s %10s %13s\n' "$mode" server "req/s" "p99 ms" "vs nginx" "p99 ratio" "CPU us/req"
  for k in $(seq 0 "$last"); do
    # shellcheck disable=SC2086
    r=$(median ${rps[$k]}); p=$(median ${p99[$k]}); c=$(median ${cpu[$k]})
    printf '%-6s %-11s %10s %9s %9s %10s %13s\n' "$mode" "${names[$k]}" "$r" "$p" "$(ratio "$r" "$n_r")" "$(ratio "$p" "$n_p")" "$c"
    if [ -n "${RESULTS:-}" ]; then
      printf 'http %s %s %s connections %s threads {"mode": "%s", "server": "%s", "connections": %s, "threads": %s, "rounds": %s, "requests_per_s": %s, "p99_ms": %s, "cpu_us_per_request": %s, "vs_nginx": %s, "p99_vs_nginx": %s}\n' \
        "$mode" "${names[$k]}" "$CONNECTIONS" "$THREADS" "$mode" "${names[$k]}" "$CONNECTIONS" "$THREADS" "$ROUNDS" "$r" "$p" "$c" "$(ratio "$r" "$n_r")" "$(ratio "$p" "$n_p")" >>"$RESULTS"
    fi
  done
done
