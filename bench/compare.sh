#!/usr/bin/env bash
# Side-by-side benchmarks: switchyard vs Nchan (nginx) vs Pushpin vs nginx's and haproxy's
# WebSocket and plain HTTP proxying (bench/http.sh, with a bare pingora proxy) vs a direct
# connection, in one run, on loopback, the server pinned to core 0 and the load generator
# (switchyard-bench) to core 1. Writes docs/BENCHMARKS.md and the charts it embeds (docs/bench/*.svg,
# drawn by bench/charts.py from the raw results).
#
#   bench/compare.sh            # everything (several minutes)
#   QUICK=1 bench/compare.sh    # smaller client counts, for a smoke run
#
# Installs nginx, libnginx-mod-nchan, pushpin, zurl and haproxy from Debian when missing, and
# the reference SockJS server (npm `sockjs`) through scripts/install-deps.sh --test.
# Needs 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=docs/BENCHMARKS.md
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.5; rm -rf "$WORK"' EXIT
ulimit -n 19500

IDLE=${IDLE:-10000}
PASS_IDLE=${PASS_IDLE:-5000}   # two sockets each: a process holds < 20k
FAN=${FAN:-10000}
RATES=${RATES:-"20 50 100 200"}
WS_RATE=${WS_RATE:-50}         # the rate of the WebSocket fan-out rows
Z_RATE=${Z_RATE:-5}            # the compression fan-out's rate (~1 KiB messages; at 10 the one-core generator, inflating, saturates)
POLLERS=${POLLERS:-1000}
POLL_RATE=${POLL_RATE:-20}
CLUSTER_RATE=${CLUSTER_RATE:-50} # the cluster fan-out's rate (two instances, FAN subscribers split)
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
ECHO_ROUNDS=${ECHO_ROUNDS:-5}  # pass-through echo: the median of alternating rounds
POLL_ROUNDS=${POLL_ROUNDS:-3}  # long-poll against Nchan: the median of rounds
HTTP_ROUNDS=${HTTP_ROUNDS:-5}  # plain HTTP (bench/http.sh): the median of alternating rounds
HTTP_SECONDS=${HTTP_SECONDS:-4}
HTTP_CONNECTIONS=${HTTP_CONNECTIONS:-"64 1000"}
HTTP_THREADS=${HTTP_THREADS:-"1 2"} # 2: every server and wrk on both cores
CHANNELS=${CHANNELS:-1000}     # channels: this many channels ...
PER_CHANNEL=${PER_CHANNEL:-10} # ... with this many SSE subscribers each,
CHANNEL_RATE=${CHANNEL_RATE:-1} # each channel published at this many msg/s by HTTP POST
CHANNEL_ROUNDS=${CHANNEL_ROUNDS:-3}
CHANNEL_IDLE=${CHANNEL_IDLE:-10000} # channels opened by one publish, nobody subscribed: memory each
if [ -n "${QUICK:-}" ]; then
  IDLE=1000; PASS_IDLE=500; FAN=500; POLLERS=200; RATES="20 100"; SECONDS_PER_RUN=3
  ECHO_ROUNDS=1; POLL_ROUNDS=1; HTTP_ROUNDS=1; HTTP_SECONDS=2; HTTP_CONNECTIONS=64; HTTP_THREADS=1
  CHANNELS=100; CHANNEL_ROUNDS=1; CHANNEL_IDLE=1000
fi

if ! ls /usr/lib/nginx/modules/ngx_nchan_module.so >/dev/null 2>&1 || ! command -v haproxy >/dev/null || ! command -v pushpin >/dev/null || ! command -v zurl >/dev/null || ! command -v redis-server >/dev/null; then
  sudo_=(); [ "$(id -u)" -ne 0 ] && sudo_=(sudo)
  "${sudo_[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y -qq --no-install-recommends nginx libnginx-mod-nchan haproxy pushpin zurl redis-server >/dev/null
fi

bash scripts/install-deps.sh --test >/dev/null
NODE_MODULES="${SWITCHYARD_TOOLS:-$HOME/.cache/switchyard-tools}/node/node_modules"
cargo build --release --locked --bins -q
BENCH="taskset -c 1 $ROOT/target/release/switchyard-bench"
SY=$ROOT/target/release/switchyard

# The benchmark backend: a quiet feed (idle runs), then feeds at each rate; /echo always.
start_backend() { # rate [payload size]: padded 100-byte messages unless told otherwise
  taskset -c 1 "$ROOT/target/release/switchyard-bench" serve --listen 127.0.0.1:9001 --rate "$1" --payload "${2:-padded}" --size "${3:-100}" --grip-listen 127.0.0.1:9002 >"$WORK/backend.log" 2>&1 &
  BACKEND=$!
  sleep 0.3
}
stop_backend() { kill "$BACKEND" 2>/dev/null || true; wait "$BACKEND" 2>/dev/null || true; }

start_switchyard() {
  cat >"$WORK/gw.yaml" <<EOF
server:
  listen:
    - addr: "127.0.0.1:8080"
  admin: "127.0.0.1:9100"
  threads: 1
  accept_rate: 100000
  accept_burst: 20000
defaults:
  limits: { max_clients: 50000, send_queue: 4096 }
routes:
  - name: feed
    path: /feed
    clients: [websocket, sse, long_poll, sockjs]
    backend: { websocket: "ws://127.0.0.1:9001/feed" }
  - name: tunnel
    path: /echo
    proxy: { upstreams: ["127.0.0.1:9001"] }
  - name: rooms
    path: "/rooms/{room}"
    backend: { publish: {} }
    backend_linger: 10m
    limits: { max_channels: 100000 }
  - name: socketio
    path: /socket.io
    clients: [socketio]
    backend: { websocket: "ws://127.0.0.1:9001/feed" }
    keepalive: { ping_interval: 60s, pong_timeout: 60s }
EOF
  taskset -c 0 "$SY" --config "$WORK/gw.yaml" --log-level warn >"$WORK/gw.log" 2>&1 &
  GW=$!
  for _ in $(seq 50); do curl -s -o /dev/null 127.0.0.1:9100/healthz && break; sleep 0.1; done
}
stop_switchyard() { kill -INT "$GW" 2>/dev/null || true; wait "$GW" 2>/dev/null || true; }

# Two instances on 8084 and 8085 (admin 9104, 9105), both on core 0, as one cluster through the
# Redis on 6390 (also on core 0) with `cluster`, or each on its own without.
start_pair() { # cluster|local
  local i port admin prefix="bench$RANDOM"
  PAIR=()
  for i in 0 1; do
    port=$((8084 + i)); admin=$((9104 + i))
    {
      printf 'server:\n  listen:\n    - addr: "127.0.0.1:%s"\n  admin: "127.0.0.1:%s"\n  threads: 1\n  accept_rate: 100000\n  accept_burst: 20000\n' "$port" "$admin"
      [ "$1" = cluster ] && printf 'cluster:\n  redis: "redis://127.0.0.1:6390/0"\n  node: "bench-%s"\n  prefix: "%s"\n' "$i" "$prefix"
      printf 'defaults:\n  limits: { max_clients: 50000, send_queue: 4096 }\nroutes:\n  - name: feed\n    path: /feed\n    clients: [sse]\n    backend: { websocket: "ws://127.0.0.1:9001/feed" }\n'
    } >"$WORK/pair$i.yaml"
    taskset -c 0 "$SY" --config "$WORK/pair$i.yaml" --log-level warn >"$WORK/pair$i.log" 2>&1 &
    PAIR+=($!)
    for _ in $(seq 50); do curl -s -o /dev/null "127.0.0.1:$admin/healthz" && break; sleep 0.1; done
  done
}
stop_pair() { kill -INT "${PAIR[@]}" 2>/dev/null || true; wait "${PAIR[@]}" 2>/dev/null || true; }
start_redis() {
  taskset -c 0 redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
  REDIS=$!
  for _ in $(seq 50); do redis-cli -p 6390 ping >/dev/null 2>&1 && break; sleep 0.1; done
}
stop_redis() { kill "$REDIS" 2>/dev/null || true; wait "$REDIS" 2>/dev/null || true; }
# CPU seconds a process has used (user + system).
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }
redis_commands() { redis-cli -p 6390 info stats | awk -F: '/^total_commands_processed/ {print $2+0}'; }
# One fan-out over the pair: half the subscribers on each instance, measured at once. Sets
# PA and PB (each instance's result) and appends them to the raw results.
fan_over_pair() { # label
  local half=$((FAN / 2))
  $BENCH fanout --url http://127.0.0.1:8084/feed --transport sse --clients "$half" --rate "$CLUSTER_RATE" --seconds "$SECONDS_PER_RUN" --json >"$WORK/pa.json" &
  local a=$!
  $BENCH fanout --url http://127.0.0.1:8085/feed --transport sse --clients "$half" --rate "$CLUSTER_RATE" --seconds "$SECONDS_PER_RUN" --json >"$WORK/pb.json" &
  local b=$!
  wait "$a" "$b"
  PA=$(tail -1 "$WORK/pa.json"); PB=$(tail -1 "$WORK/pb.json")
  echo "$1 instance A $PA" >>"$WORK/results.txt"
  echo "$1 instance B $PB" >>"$WORK/results.txt"
}

# The reference SockJS server (sockjs-node), its echo service on 127.0.0.1:8083/echo.
start_sockjs_node() {
  NODE_PATH="$NODE_MODULES" taskset -c 0 node "$ROOT/tests/sockjs/reference.js" 8083 >"$WORK/sockjs-node.log" 2>&1 &
  SJN=$!
  for _ in $(seq 50); do curl -s -o /dev/null 127.0.0.1:8083/echo/info && break; sleep 0.1; done
}
stop_sockjs_node() { kill "$SJN" 2>/dev/null || true; wait "$SJN" 2>/dev/null || true; }
# The npm socket.io 4 server on 127.0.0.1:8086 (path /socket.io), fed the benchmark backend's feed.
start_socketio_peer() {
  NODE_PATH="$TOOLS_NODE" taskset -c 0 node "$ROOT/bench/socketio-peer.js" 8086 ws://127.0.0.1:9001/feed >"$WORK/socketio-peer.log" 2>&1 &
  SIO=$!
  for _ in $(seq 50); do curl -s -o /dev/null "127.0.0.1:8086/socket.io/?EIO=4&transport=polling" && break; sleep 0.1; done
}
stop_socketio_peer() { kill "$SIO" 2>/dev/null || true; wait "$SIO" 2>/dev/null || true; }

start_nginx() {
  mkdir -p "$WORK/nginx"
  cat >"$WORK/nginx/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes 1;
worker_rlimit_nofile 19500;
${SHUTDOWN_TIMEOUT:+worker_shutdown_timeout ${SHUTDOWN_TIMEOUT}s;}
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 19000; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx;
  proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx;
  scgi_temp_path $WORK/nginx;
  server {
    listen 127.0.0.1:8081;
    ${NCHAN_DEFLATE:+nchan_deflate_message_for_websocket on;}
    location = /sub { nchan_subscriber; nchan_channel_id test; nchan_subscriber_first_message newest; }
    location = /pub { nchan_publisher; nchan_channel_id test; }
    location ~ ^/rooms/([A-Za-z0-9]+)\$ { nchan_subscriber; nchan_channel_id \$1; }
    location ~ ^/publish/rooms/([A-Za-z0-9]+)\$ { nchan_publisher; nchan_channel_id \$1; }
    location /echo {
      proxy_pass http://127.0.0.1:9001;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 300s;
    }
  }
}
EOF
  taskset -c 0 nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;' >"$WORK/nginx/out.log" 2>&1 &
  NGINX=$!
  for _ in $(seq 50); do curl -s -o /dev/null -m 1 127.0.0.1:8081/pub && break; sleep 0.1; done
}
stop_nginx() { kill -QUIT "$NGINX" 2>/dev/null || true; wait "$NGINX" 2>/dev/null || true; }
# The master and its workers (workers hold the connections).
nginx_pids() { { echo "$NGINX"; pgrep -P "$NGINX"; } | paste -sd, -; }

start_haproxy() {
  cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout tunnel 300s
frontend fe
  bind 127.0.0.1:8082
  default_backend be
backend be
  server s1 127.0.0.1:9001
EOF
  taskset -c 0 haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
  HAPROXY=$!
  for _ in $(seq 50); do curl -s -o /dev/null -m 1 127.0.0.1:8082/ && break; sleep 0.1; done
}
stop_haproxy() { kill "$HAPROXY" 2>/dev/null || true; wait "$HAPROXY" 2>/dev/null || true; }

# Pushpin with its own run and log folders, its message rate limits raised (the default
# message_rate=2500 would cap deliveries), and its own zurl allowed to reach 127.* (Debian's
# denies it) for the GRIP origin on :9002 that `switchyard-bench serve --grip-listen` runs.
start_pushpin() {
  local d=$WORK/pushpin
  mkdir -p "$d/run" "$d/log"
  sed "s|ipc:///var/run/zurl/|ipc://$d/run/zurl-|" /usr/lib/pushpin/internal.conf >"$d/internal.conf"
  sed -e "s|^include=.*|include=$d/internal.conf|" -e "s|^rundir=.*|rundir=$d/run|" \
      -e "s|^logdir=.*|logdir=$d/log|" -e "s|^routesfile=.*|routesfile=$d/routes|" \
      -e 's|^message_rate=.*|message_rate=100000000|' -e 's|^message_hwm=.*|message_hwm=100000000|' \
      /etc/pushpin/pushpin.conf >"$d/pushpin.conf"
  echo "* 127.0.0.1:9002" >"$d/routes"
  sed -e "s|ipc:///var/run/zurl/|ipc://$d/run/zurl-|" -e 's|^deny=.*|deny=|' \
      -e 's|^max_open_requests=.*|max_open_requests=20000|' /etc/zurl.conf >"$d/zurl.conf"
  taskset -c 0 zurl --config="$d/zurl.conf" >"$d/zurl.log" 2>&1 &
  ZURL=$!
  taskset -c 0 pushpin --config "$d/pushpin.conf" >"$d/out.log" 2>&1 &
  PUSHPIN=$!
  for _ in $(seq 50); do curl -s -o /dev/null -m 1 127.0.0.1:7999/ && break; sleep 0.1; done
  sleep 0.5
}
stop_pushpin() { kill "$PUSHPIN" "$ZURL" 2>/dev/null || true; wait "$PUSHPIN" "$ZURL" 2>/dev/null || true; }
# Every Pushpin process (its runner starts condure, the proxy and the handler) and its zurl.
pushpin_pids() {
  local all=$PUSHPIN next=$PUSHPIN kids
  while [ -n "$next" ]; do
    kids=$(for p in $next; do pgrep -P "$p"; done | paste -sd' ' -)
    all="$all $kids"; next=$kids
  done
  echo "$all $ZURL" | tr -s ' ' ',' | sed 's/^,//; s/,$//'
}

# One fan-out measurement per server at `rate`: switchyard through its bridged route, Nchan fed
# the same messages through its WebSocket publisher. Sets S and N, appends JSON lines.
fan_pair() { # transport (sse|ws|poll) clients rate
  local transport=$1 clients=$2 rate=$3 nchan_transport=$1 url_sy url_nc
  url_sy=http://127.0.0.1:8080/feed; url_nc=http://127.0.0.1:8081/sub
  [ "$transport" = ws ] && { url_sy=ws://127.0.0.1:8080/feed; url_nc=ws://127.0.0.1:8081/sub; }
  [ "$transport" = poll ] && nchan_transport=nchan-poll
  start_backend "$rate"; start_switchyard
  S=$(run "switchyard fanout $transport $clients@$rate/s" $BENCH fanout --url "$url_sy" --transport "$transport" --clients "$clients" --rate "$rate" --seconds "$SECONDS_PER_RUN" --pids "$GW")
  stop_switchyard; stop_backend
  start_nginx
  taskset -c 1 "$ROOT/target/release/switchyard-bench" publish --url ws://127.0.0.1:8081/pub --rate "$rate" >"$WORK/pub.log" 2>&1 &
  PUB=$!
  N=$(run "nchan fanout $transport $clients@$rate/s" $BENCH fanout --url "$url_nc" --transport "$nchan_transport" --clients "$clients" --rate "$rate" --seconds "$SECONDS_PER_RUN" --pids "$(nginx_pids)")
  kill "$PUB" 2>/dev/null || true; wait "$PUB" 2>/dev/null || true
  stop_nginx
  # Pushpin serves SSE subscribers (its WebSocket and long-poll modes need other GRIP origins).
  P=""
  if [ "$transport" = sse ]; then
    start_backend 0; start_pushpin
    taskset -c 1 "$ROOT/target/release/switchyard-bench" publish --url http://127.0.0.1:5561/publish/ --rate "$rate" >"$WORK/pub.log" 2>&1 &
    PUB=$!
    # Pushpin refuses some connections opened in large bursts: 20 at a time.
    P=$(run "pushpin fanout $transport $clients@$rate/s" $BENCH fanout --url http://127.0.0.1:7999/feed --transport sse --clients "$clients" --rate "$rate" --seconds "$SECONDS_PER_RUN" --batch 20)
    kill "$PUB" 2>/dev/null || true; wait "$PUB" 2>/dev/null || true
    stop_pushpin; stop_backend
  fi
  for pair in "switchyard:$S" "nchan:$N" ${P:+"pushpin:$P"}; do
    echo "${pair#*:}" | python3 -c 'import json,sys; d=json.load(sys.stdin); d["server"]=sys.argv[1]; print(json.dumps(d))' "${pair%%:*}" >>"$FAN_JSON_FILE"
  done
}
z_row() { # json: a compression fan-out row
  echo "$1" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%d/s | %.4f | %d | %.2f | %.1f | %.1f" % (d["deliveries_per_s"], d["delivered_ratio"], d["wire_bytes_per_delivery"], d["server_cpu_us_per_delivery"], d["p50_ms"], d["p99_ms"]))'
}
fan_row() { # json
  echo "$1" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%d/s | %.4f | %d | %d | %.1f | %.1f | %.1f" % (d["deliveries_per_s"], d["delivered_ratio"], d["gaps"], d["duplicates"], d["p50_ms"], d["p99_ms"], d["max_ms"]))'
}

# The median of each number over runs (a file of JSON lines, one per run), with "rounds".
median_json() { # file
  python3 -c 'import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out = dict(runs[0])
for k, v in runs[0].items():
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        out[k] = statistics.median(r[k] for r in runs)
out["rounds"] = len(runs)
print(json.dumps(out))' "$1"
}

field() { # json key
  python3 -c 'import json,sys; print(json.loads(sys.stdin.readlines()[-1])[sys.argv[1]])' "$1"
}
run() { # label, command...
  local label=$1; shift
  local json
  json=$("$@" --json | tail -1)
  echo "$label $json" | tee -a "$WORK/results.txt" >&2
  echo "$json"
}

echo "== idle density" >&2
start_backend 0
start_switchyard
SY_SSE=$(run "switchyard idle sse" $BENCH idle --url http://127.0.0.1:8080/feed --transport sse --clients "$IDLE" --pids "$GW")
stop_switchyard; start_switchyard
SY_WS=$(run "switchyard idle ws" $BENCH idle --url ws://127.0.0.1:8080/feed --transport ws --clients "$IDLE" --pids "$GW")
stop_switchyard; start_switchyard
SY_POLL=$(run "switchyard idle poll" $BENCH idle --url http://127.0.0.1:8080/feed --transport poll --clients "$IDLE" --pids "$GW")
stop_switchyard; start_switchyard
SY_PASS=$(run "switchyard idle pass-through ws" $BENCH idle --url ws://127.0.0.1:8080/echo --transport ws --clients "$PASS_IDLE" --pids "$GW")
stop_switchyard; start_switchyard
SY_RAW=$(run "switchyard idle raw connection" $BENCH idle --url http://127.0.0.1:8080/feed --transport raw --clients "$IDLE" --pids "$GW")
stop_switchyard
start_nginx
NC_SSE=$(run "nchan idle sse" $BENCH idle --url http://127.0.0.1:8081/sub --transport sse --clients "$IDLE" --pids "$(nginx_pids)")
stop_nginx; start_nginx
NC_WS=$(run "nchan idle ws" $BENCH idle --url ws://127.0.0.1:8081/sub --transport ws --clients "$IDLE" --pids "$(nginx_pids)")
stop_nginx; start_nginx
NG_PASS=$(run "nginx idle pass-through ws" $BENCH idle --url ws://127.0.0.1:8081/echo --transport ws --clients "$PASS_IDLE" --pids "$(nginx_pids)")
stop_nginx
start_pushpin
PP_SSE=$(run "pushpin idle sse" $BENCH idle --url http://127.0.0.1:7999/feed --transport sse --clients "$IDLE" --pids "$(pushpin_pids)" --batch 20)
stop_pushpin
stop_backend

echo "== SockJS idle sessions" >&2
# Sessions held by a streaming receiver each: switchyard on a shared feed, sockjs-node (the
# reference server) on its echo service; a session's cost alone, no messages.
start_backend 0
start_switchyard
SY_SJX=$(run "switchyard idle sockjs xhr_streaming" $BENCH idle --url http://127.0.0.1:8080/feed --transport sockjs-xhr_streaming --clients "$IDLE" --pids "$GW")
stop_switchyard; start_switchyard
SY_SJE=$(run "switchyard idle sockjs eventsource" $BENCH idle --url http://127.0.0.1:8080/feed --transport sockjs-eventsource --clients "$IDLE" --pids "$GW")
stop_switchyard
stop_backend
start_sockjs_node
SN_SJX=$(run "sockjs-node idle sockjs xhr_streaming" $BENCH idle --url http://127.0.0.1:8083/echo --transport sockjs-xhr_streaming --clients "$IDLE" --pids "$SJN")
stop_sockjs_node; start_sockjs_node
SN_SJE=$(run "sockjs-node idle sockjs eventsource" $BENCH idle --url http://127.0.0.1:8083/echo --transport sockjs-eventsource --clients "$IDLE" --pids "$SJN")
stop_sockjs_node

echo "== fan-out" >&2
FAN_ROWS=""
FAN_JSON_FILE="$WORK/fanout.jsonl"
: >"$FAN_JSON_FILE"
for rate in $RATES; do
  fan_pair sse "$FAN" "$rate"
  FAN_ROWS+="| $rate msg/s | switchyard | $(fan_row "$S") |"$'\n'
  FAN_ROWS+="| $rate msg/s | nchan | $(fan_row "$N") |"$'\n'
  FAN_ROWS+="| $rate msg/s | pushpin | $(fan_row "$P") |"$'\n'
done
fan_pair ws "$FAN" "$WS_RATE"
WS_ROWS="| $WS_RATE msg/s | switchyard | $(fan_row "$S") |"$'\n'
WS_ROWS+="| $WS_RATE msg/s | nchan | $(fan_row "$N") |"$'\n'

echo "== WebSocket compression" >&2
# permessage-deflate: an idle compressed WebSocket against the uncompressed one above, then the
# same fan-out of ~1 KiB JSON quotes to WebSocket subscribers with and without compression, on
# switchyard and on Nchan (which also keeps one deflated copy of each message:
# nchan_deflate_message_for_websocket). The server's CPU is measured over each run.
start_backend 0; start_switchyard
SY_WSD=$(run "switchyard idle ws-deflate" $BENCH idle --url ws://127.0.0.1:8080/feed --transport ws-deflate --clients "$IDLE" --pids "$GW")
stop_switchyard; stop_backend
Z_ROWS=""
for transport in ws ws-deflate; do
  start_backend "$Z_RATE" json 1024; start_switchyard
  Z=$(run "switchyard fanout $transport json" $BENCH fanout --url ws://127.0.0.1:8080/feed --transport "$transport" --clients "$FAN" --rate "$Z_RATE" --seconds "$SECONDS_PER_RUN" --pids "$GW")
  stop_switchyard; stop_backend
  if [ "$transport" = ws ]; then Z_SY_OFF=$Z; else Z_SY_ON=$Z; fi
  Z_ROWS+="| switchyard | $transport | $(z_row "$Z") |"$'\n'
  NCHAN_DEFLATE=1 start_nginx
  taskset -c 1 "$ROOT/target/release/switchyard-bench" publish --url ws://127.0.0.1:8081/pub --rate "$Z_RATE" --payload json --size 1024 >"$WORK/pub.log" 2>&1 &
  PUB=$!
  Z=$(run "nchan fanout $transport json" $BENCH fanout --url ws://127.0.0.1:8081/sub --transport "$transport" --clients "$FAN" --rate "$Z_RATE" --seconds "$SECONDS_PER_RUN" --pids "$(nginx_pids)")
  kill "$PUB" 2>/dev/null || true; wait "$PUB" 2>/dev/null || true
  stop_nginx
  if [ "$transport" = ws ]; then Z_NC_OFF=$Z; else Z_NC_ON=$Z; fi
  Z_ROWS+="| nchan | $transport | $(z_row "$Z") |"$'\n'
done

echo "== long-poll" >&2
: >"$WORK/poll_sy.jsonl"; : >"$WORK/poll_nc.jsonl"
for _ in $(seq "$POLL_ROUNDS"); do
  fan_pair poll "$POLLERS" "$POLL_RATE"
  echo "$S" >>"$WORK/poll_sy.jsonl"; echo "$N" >>"$WORK/poll_nc.jsonl"
done
P_SY=$(median_json "$WORK/poll_sy.jsonl"); P_NC=$(median_json "$WORK/poll_nc.jsonl")

echo "== channels" >&2
# CHANNELS channels x PER_CHANNEL SSE subscribers, each channel published at CHANNEL_RATE msg/s
# by HTTP POST (switchyard: POST /publish/rooms/cN on its admin listener; Nchan: its HTTP
# publisher location, nchan_channel_id from the URL), alternating rounds; then the memory of
# channels opened by one publish with nobody subscribed.
: >"$WORK/ch_sy.jsonl"; : >"$WORK/ch_nc.jsonl"
for _ in $(seq "$CHANNEL_ROUNDS"); do
  start_switchyard
  run "switchyard channels" $BENCH channels --url 'http://127.0.0.1:8080/rooms/{}' --publish 'http://127.0.0.1:9100/publish/rooms/{}' --channels "$CHANNELS" --per-channel "$PER_CHANNEL" --rate "$CHANNEL_RATE" --seconds "$SECONDS_PER_RUN" --pids "$GW" >>"$WORK/ch_sy.jsonl"
  stop_switchyard
  start_nginx
  run "nchan channels" $BENCH channels --url 'http://127.0.0.1:8081/rooms/{}' --publish 'http://127.0.0.1:8081/publish/rooms/{}' --channels "$CHANNELS" --per-channel "$PER_CHANNEL" --rate "$CHANNEL_RATE" --seconds "$SECONDS_PER_RUN" --pids "$(nginx_pids)" >>"$WORK/ch_nc.jsonl"
  stop_nginx
done
C_SY=$(median_json "$WORK/ch_sy.jsonl"); C_NC=$(median_json "$WORK/ch_nc.jsonl")
start_switchyard
CM_SY=$(run "switchyard channel memory" $BENCH channel-memory --publish 'http://127.0.0.1:9100/publish/rooms/{}' --channels "$CHANNEL_IDLE" --pids "$GW")
stop_switchyard
start_nginx
CM_NC=$(run "nchan channel memory" $BENCH channel-memory --publish 'http://127.0.0.1:8081/publish/rooms/{}' --channels "$CHANNEL_IDLE" --pids "$(nginx_pids)")
stop_nginx

echo "== pass-through WebSocket echo" >&2
# ECHO_ROUNDS rounds, each path once per round, in an order that alternates between rounds;
# each path's figures are the medians over its rounds.
start_backend 0; start_switchyard; start_nginx; start_haproxy
ECHO_PATHS=(direct:9001 switchyard:8080 nginx:8081 haproxy:8082)
for name in direct switchyard nginx haproxy; do : >"$WORK/echo_$name.jsonl"; done
for i in $(seq "$ECHO_ROUNDS"); do
  order=(0 1 2 3); ((i % 2)) || order=(3 2 1 0)
  for k in "${order[@]}"; do
    name=${ECHO_PATHS[$k]%%:*}; port=${ECHO_PATHS[$k]#*:}
    run "$name echo round $i" $BENCH echo --url "ws://127.0.0.1:$port/echo" --clients 100 --seconds "$SECONDS_PER_RUN" >>"$WORK/echo_$name.jsonl"
  done
done
E_DIRECT=$(median_json "$WORK/echo_direct.jsonl"); E_SY=$(median_json "$WORK/echo_switchyard.jsonl")
E_NG=$(median_json "$WORK/echo_nginx.jsonl"); E_HA=$(median_json "$WORK/echo_haproxy.jsonl")
stop_haproxy; stop_nginx; stop_switchyard; stop_backend

echo "== plain HTTP pass-through" >&2
# bench/http.sh in each setup: switchyard, nginx, haproxy and a bare pingora proxy in front of
# one answering nginx, GET and 16 KiB POST; its medians go into the raw results as "http ...".
for threads in $HTTP_THREADS; do
  for conns in $HTTP_CONNECTIONS; do
    cpus=0; load=1
    [ "$threads" -gt 1 ] && { cpus=0,1; load=0,1; }
    RESULTS="$WORK/results.txt" ROUNDS="$HTTP_ROUNDS" SECONDS_PER_RUN="$HTTP_SECONDS" CONNECTIONS="$conns" \
      THREADS="$threads" SERVER_CPUS="$cpus" LOAD_CPUS="$load" bash bench/http.sh >&2
  done
done

echo "== pass-through drain" >&2
# Tunnels held through each proxy while it is told to stop gracefully: how each one ended.
# nginx gets worker_shutdown_timeout 1s so its graceful stop ends at all (by default it waits
# for every tunnel).
HOLD=$((PASS_IDLE / 5))
start_backend 0; start_switchyard
$BENCH hold --url ws://127.0.0.1:8080/echo --clients "$HOLD" --seconds 8 --json >"$WORK/hold_sy.json" &
HOLDER=$!
sleep 3; kill -TERM "$GW"
wait "$HOLDER"; wait "$GW" 2>/dev/null || true
D_SY=$(tail -1 "$WORK/hold_sy.json"); echo "switchyard drain $D_SY" | tee -a "$WORK/results.txt" >&2
SHUTDOWN_TIMEOUT=1 start_nginx
$BENCH hold --url ws://127.0.0.1:8081/echo --clients "$HOLD" --seconds 8 --json >"$WORK/hold_ng.json" &
HOLDER=$!
sleep 3; kill -QUIT "$NGINX"
wait "$HOLDER"; wait "$NGINX" 2>/dev/null || true
D_NG=$(tail -1 "$WORK/hold_ng.json"); echo "nginx drain $D_NG" | tee -a "$WORK/results.txt" >&2
stop_backend

echo "== Socket.IO clients" >&2
# bench/socketio.sh: switchyard against the npm socket.io server, its own Markdown section.
SIO_SECTION=$(RESULTS="$WORK/results.txt" CLIENTS="$IDLE" FAN="$FAN" SECONDS_PER_RUN="$SECONDS_PER_RUN" bash bench/socketio.sh)

echo "== cluster (two instances, Redis Streams)" >&2
# The same fan-out split over two instances: each with its own backend connection (no
# cluster), then as one cluster (one backend connection, the other instance reading the
# stream). Redis's CPU is read from /proc over the clustered run. Then the idle cost: FAN idle
# SSE clients on the cluster, and what Redis is asked per second meanwhile.
start_redis
start_backend "$CLUSTER_RATE"
start_pair local
fan_over_pair "local pair"
L_A=$PA; L_B=$PB
stop_pair
start_pair cluster
sleep 1
R0=$(cpu_s "$REDIS"); C0=$(redis_commands)
fan_over_pair "cluster pair"
R1=$(cpu_s "$REDIS"); C1=$(redis_commands)
C_A=$PA; C_B=$PB
HOLDER=""
for admin in 9104 9105; do
  [ "$(curl -s "127.0.0.1:$admin/metrics" | grep -c '^switchyard_cluster_lease_held{route="feed"} 1')" -gt 0 ] && HOLDER=$admin
done
stop_pair
stop_backend
REDIS_US_PER_MSG=$(python3 -c "import sys; print('%.1f' % ((float(sys.argv[2]) - float(sys.argv[1])) * 1e6 / (int(sys.argv[3]) * int(sys.argv[4]))))" "$R0" "$R1" "$CLUSTER_RATE" "$SECONDS_PER_RUN")
REDIS_CMDS_PER_MSG=$(python3 -c "import sys; print('%.1f' % ((int(sys.argv[2]) - int(sys.argv[1])) / (int(sys.argv[3]) * int(sys.argv[4]))))" "$C0" "$C1" "$CLUSTER_RATE" "$SECONDS_PER_RUN")
start_backend 0
start_pair cluster
$BENCH idle --url http://127.0.0.1:8084/feed --transport sse --clients $((IDLE / 2)) --pids "${PAIR[0]}" --seconds 30 --json >"$WORK/ia.json" &
IA=$!
$BENCH idle --url http://127.0.0.1:8085/feed --transport sse --clients $((IDLE / 2)) --pids "${PAIR[1]}" --seconds 30 --json >"$WORK/ib.json" &
IB=$!
# Let both sides connect, then count what Redis is asked over 15 s of idleness.
sleep 12
I0=$(redis_commands); RI0=$(cpu_s "$REDIS"); sleep 15; I1=$(redis_commands); RI1=$(cpu_s "$REDIS")
wait "$IA" "$IB"
IDLE_OPS=$(python3 -c "import sys; print('%.1f' % ((int(sys.argv[2]) - int(sys.argv[1])) / 15))" "$I0" "$I1")
# Redis's CPU while the cluster idles (its own timers and the cluster's constant chatter), and
# per message once that is taken off the fan-out run's.
REDIS_IDLE_SHARE=$(python3 -c "import sys; print('%.2f' % ((float(sys.argv[2]) - float(sys.argv[1])) / 15 * 100))" "$RI0" "$RI1")
REDIS_NET_US_PER_MSG=$(python3 -c "import sys; r0,r1,i0,i1=map(float,sys.argv[1:5]); n=int(sys.argv[5])*int(sys.argv[6]); print('%.1f' % (max(0.0, (r1-r0) - (i1-i0)/15*int(sys.argv[6])) * 1e6 / n))" "$R0" "$R1" "$RI0" "$RI1" "$CLUSTER_RATE" "$SECONDS_PER_RUN")
echo "cluster idle: $IDLE SSE clients, $IDLE_OPS Redis commands/s; $(tail -1 "$WORK/ia.json") $(tail -1 "$WORK/ib.json")" >>"$WORK/results.txt"
stop_pair
stop_backend
stop_redis

kib() { echo "$1" | field kib_per_client; }
cpu() { echo "$1" | field cpu_share_of_one_core; }
rt() { printf '%.0f' "$(echo "$1" | field round_trips_per_s)"; }
p99() { printf '%.2f' "$(echo "$1" | field p99_ms)"; }
p50() { printf '%.2f' "$(echo "$1" | field p50_ms)"; }
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print('%.2f' % (a/b if b else 0))" "$1" "$2"; }

# The charts, from the raw results, before the markdown that embeds them: embedded only if drawn.
# If drawing fails the results are still written, and the run fails at the end.
echo "== charts" >&2
CHARTS=""
if python3 bench/charts.py --results "$WORK/results.txt" --rates "$RATES" --out "$WORK/charts"; then
  mkdir -p docs/bench
  cp "$WORK"/charts/*.svg docs/bench/
  CHARTS=1
fi
chart() { # file alt: the chart's embed and a blank line, when the charts were drawn
  [ -z "$CHARTS" ] || printf '![%s](bench/%s)\n\n' "$2" "$1"
}

mkdir -p docs
{
  echo "# Benchmarks"
  echo
  echo "Produced by \`bench/compare.sh\` in one run on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -m)): the server"
  echo "pinned to core 0, \`switchyard-bench\` (load generator and backend) to core 1, loopback only."
  echo "Every subscriber verifies what it receives (one feed, in order, no duplicates, counted gaps)."
  echo "Absolute figures on a shared 2-core machine are noise; compare within a run."
  echo
  echo "Reproduce: \`bench/compare.sh\` (or \`QUICK=1 bench/compare.sh\` for a smoke run). Redraw the charts"
  echo "from the raw results at the end: \`bench/charts.py --from-markdown docs/BENCHMARKS.md\`."
  echo
  echo "## Idle density (RSS growth per client, \`/proc/PID/smaps_rollup\`; CPU with heartbeats on)"
  echo
  chart idle-memory.svg "Memory per idle client, a bar per server and kind of client"
  echo "| clients | switchyard | nchan | pushpin (all its processes) | nginx proxy |"
  echo "|---|---|---|---|---|"
  echo "| SSE, $IDLE idle | $(kib "$SY_SSE") KiB, $(cpu "$SY_SSE") core | $(kib "$NC_SSE") KiB, $(cpu "$NC_SSE") core | $(kib "$PP_SSE") KiB, $(cpu "$PP_SSE") core | - |"
  echo "| WebSocket (terminated), $IDLE idle | $(kib "$SY_WS") KiB, $(cpu "$SY_WS") core | $(kib "$NC_WS") KiB, $(cpu "$NC_WS") core | - | - |"
  echo "| long-poll, $IDLE waiting | $(kib "$SY_POLL") KiB, $(cpu "$SY_POLL") core | - | - | - |"
  echo "| WebSocket pass-through, $PASS_IDLE idle (2 sockets each) | $(kib "$SY_PASS") KiB, $(cpu "$SY_PASS") core | - | - | $(kib "$NG_PASS") KiB, $(cpu "$NG_PASS") core |"
  echo "| accepted connection that sent nothing, $IDLE | $(kib "$SY_RAW") KiB | - | - | - |"
  echo
  echo "SockJS sessions (legacy clients), each held open by its streaming receiver: switchyard on a"
  echo "shared feed, against the reference SockJS server (sockjs-node, the npm package \`sockjs\`)."
  echo
  echo "| sessions | switchyard | sockjs-node |"
  echo "|---|---|---|"
  echo "| xhr_streaming, $IDLE idle | $(kib "$SY_SJX") KiB, $(cpu "$SY_SJX") core | $(kib "$SN_SJX") KiB, $(cpu "$SN_SJX") core |"
  echo "| eventsource, $IDLE idle | $(kib "$SY_SJE") KiB, $(cpu "$SY_SJE") core | $(kib "$SN_SJE") KiB, $(cpu "$SN_SJE") core |"
  echo
  echo "## Fan-out: one feed, $FAN SSE subscribers, ~100-byte messages, ${SECONDS_PER_RUN}s per run"
  echo
  echo "Nchan gets the same messages through its WebSocket publisher endpoint, Pushpin through its HTTP"
  echo "publish API (one POST per message; its subscribers reach it through a GRIP origin that holds"
  echo "every request on channel test; opened 20 at a time, as it refuses larger bursts)."
  echo
  chart fanout-deliveries.svg "SSE fan-out deliveries per second against the publish rate, a line per server"
  chart fanout-p99.svg "SSE fan-out p99 latency against the publish rate, a line per server"
  echo "| publish rate | server | deliveries | delivered / expected | gaps | duplicates | p50 ms | p99 ms | max ms |"
  echo "|---|---|---|---|---|---|---|---|---|"
  printf '%s' "$FAN_ROWS"
  echo
  echo "The same with $FAN WebSocket subscribers:"
  echo
  echo "| publish rate | server | deliveries | delivered / expected | gaps | duplicates | p50 ms | p99 ms | max ms |"
  echo "|---|---|---|---|---|---|---|---|---|"
  printf '%s' "$WS_ROWS"
  echo
  echo "## WebSocket compression (permessage-deflate)"
  echo
  echo "Idle: $IDLE terminated WebSockets that agreed to permessage-deflate, against the same without it"
  echo "(the row above): $(kib "$SY_WSD") KiB vs $(kib "$SY_WS") KiB per client."
  echo
  echo "Fan-out: $FAN WebSocket subscribers of one feed of ~1 KiB JSON quotes at $Z_RATE msg/s, ${SECONDS_PER_RUN}s,"
  echo "offering permessage-deflate (\`ws-deflate\`, as browsers do) or not (\`ws\`). Every subscriber inflates"
  echo "and checks each message. Bytes are what subscribers read off the socket per delivery; CPU is the"
  echo "server's (all its processes) over the run, per delivery. Nchan keeps one deflated copy of each"
  echo "message (\`nchan_deflate_message_for_websocket on\`)."
  echo
  echo "| server | subscribers | deliveries | delivered / expected | wire bytes / delivery | server CPU µs / delivery | p50 ms | p99 ms |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s' "$Z_ROWS"
  echo
  echo "## Long-poll: $POLLERS clients polling one feed at $POLL_RATE msg/s, ${SECONDS_PER_RUN}s, median of $POLL_ROUNDS rounds"
  echo
  echo "switchyard answers each poll with every message after the client's cursor (JSON); Nchan answers"
  echo "with one message, and the client asks for the next with If-Modified-Since / If-None-Match."
  echo
  echo "| server | completed polls/s | deliveries | delivered / expected | gaps | duplicates | p50 ms | p99 ms | max ms | server CPU µs / delivery |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  echo "| switchyard | $(echo "$P_SY" | field polls_per_s) | $(fan_row "$P_SY") | $(echo "$P_SY" | field server_cpu_us_per_delivery) |"
  echo "| nchan | $(echo "$P_NC" | field polls_per_s) | $(fan_row "$P_NC") | $(echo "$P_NC" | field server_cpu_us_per_delivery) |"
  echo
  echo "## Channels: $CHANNELS channels x $PER_CHANNEL SSE subscribers, each channel published at $CHANNEL_RATE msg/s by HTTP POST, ${SECONDS_PER_RUN}s, median of $CHANNEL_ROUNDS rounds"
  echo
  echo "switchyard: a route on \`/rooms/{room}\` fed only by publishes (\`POST /publish/rooms/cN\` on its admin"
  echo "listener); Nchan: \`nchan_channel_id\` from the URL and its HTTP publisher. 8 kept-alive publishing"
  echo "connections; latency is from the publish to the subscriber; CPU is the server's over the run."
  echo
  echo "| server | deliveries | delivered / expected | gaps | duplicates | p50 ms | p99 ms | max ms | server CPU µs / delivery |"
  echo "|---|---|---|---|---|---|---|---|---|"
  echo "| switchyard | $(fan_row "$C_SY") | $(echo "$C_SY" | field server_cpu_us_per_delivery) |"
  echo "| nchan | $(fan_row "$C_NC") | $(echo "$C_NC" | field server_cpu_us_per_delivery) |"
  echo
  echo "Memory per channel opened by one ~100-byte publish, nobody subscribed ($CHANNEL_IDLE channels, RSS of"
  echo "every process): switchyard $(echo "$CM_SY" | field bytes_per_channel) bytes, Nchan $(echo "$CM_NC" | field bytes_per_channel) bytes."
  echo
  echo "## Pass-through WebSocket echo, 100 clients, ${SECONDS_PER_RUN}s, median of $ECHO_ROUNDS alternating rounds"
  echo
  echo "| path | round trips/s | vs direct | p50 ms | p99 ms |"
  echo "|---|---|---|---|---|"
  echo "| direct to the backend | $(rt "$E_DIRECT") | 1.00 | $(p50 "$E_DIRECT") | $(p99 "$E_DIRECT") |"
  echo "| switchyard | $(rt "$E_SY") | $(ratio "$(rt "$E_SY")" "$(rt "$E_DIRECT")") | $(p50 "$E_SY") | $(p99 "$E_SY") |"
  echo "| nginx | $(rt "$E_NG") | $(ratio "$(rt "$E_NG")" "$(rt "$E_DIRECT")") | $(p50 "$E_NG") | $(p99 "$E_NG") |"
  echo "| haproxy | $(rt "$E_HA") | $(ratio "$(rt "$E_HA")" "$(rt "$E_DIRECT")") | $(p50 "$E_HA") | $(p99 "$E_HA") |"
  echo
  echo "switchyard / nginx round trips: $(ratio "$(rt "$E_SY")" "$(rt "$E_NG")"); switchyard / haproxy: $(ratio "$(rt "$E_SY")" "$(rt "$E_HA")")"
  echo
  echo "## Plain HTTP/1.1 pass-through"
  echo
  echo "\`bench/http.sh\`: each proxy in front of one nginx answering \`200 ok\`, with keep-alive to it (nginx:"
  echo "\`keepalive\` pool, bodies kept in memory; haproxy: \`http-reuse always\`); the bare pingora proxy is a"
  echo "\`ProxyHttp\` with only \`upstream_peer\` (\`examples/pingora_bare.rs\`): pingora's own cost. wrk, one"
  echo "thread. One thread or worker: servers on core 0, wrk on core 1; two: everything on both cores."
  echo "Median of $HTTP_ROUNDS alternating rounds of ${HTTP_SECONDS}s; CPU is the proxy's own per request."
  echo
  chart http.svg "Plain HTTP pass-through requests per second, a bar per proxy and setup"
  echo "| request | connections | threads | server | req/s | vs nginx | p99 ms | p99 vs nginx | CPU µs / request |"
  echo "|---|---|---|---|---|---|---|---|---|"
  python3 - "$WORK/results.txt" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if line.startswith("http "):
        d = json.loads(line[line.index("{"):])
        print(f"| {d['mode'].upper()} | {d['connections']} | {d['threads']} | {d['server']} | {d['requests_per_s']:.0f} | {d['vs_nginx']:.2f} | {d['p99_ms']:.2f} | {d['p99_vs_nginx']:.2f} | {d['cpu_us_per_request']:.1f} |")
PY
  echo
  echo "## Pass-through drain: $HOLD idle tunnels, then a graceful stop"
  echo
  echo "switchyard gets SIGTERM (shutdown_grace 10s by default); nginx gets SIGQUIT with"
  echo "worker_shutdown_timeout 1s. How each tunnel ended, as its client saw it:"
  echo
  echo "| proxy | close 1001 | other close codes | cut without a close frame | still open after 5 s |"
  echo "|---|---|---|---|---|"
  for pair in "switchyard:$D_SY" "nginx:$D_NG"; do
    echo "${pair#*:}" | python3 -c 'import json,sys; d=json.load(sys.stdin); o={k:v for k,v in d["closed_with"].items() if k!="1001"}; print("| %s | %d | %s | %d | %d |" % (sys.argv[1], d["closed_1001"], o or "-", d["cut_without_close"], d["still_open"]))' "${pair%%:*}"
  done
  echo
  echo "$SIO_SECTION"
  echo
  echo "## Several instances as one gateway (cluster on Redis Streams)"
  echo
  echo "$FAN SSE subscribers of one feed at $CLUSTER_RATE msg/s (~100 bytes), half on each of two instances,"
  echo "${SECONDS_PER_RUN}s. Without \`cluster:\` each instance has its own backend connection; with it, one"
  echo "instance holds the feed's lease (its clients are served as before) and the other reads Redis's"
  echo "stream (its clients pay the Redis hop). Both instances and Redis on core 0."
  echo
  echo "| setup | instance | deliveries | delivered / expected | gaps | duplicates | p50 ms | p99 ms | max ms |"
  echo "|---|---|---|---|---|---|---|---|---|"
  if [ "$HOLDER" = 9105 ]; then ROLE_A="reads the stream"; ROLE_B="lease holder"; else ROLE_A="lease holder"; ROLE_B="reads the stream"; fi
  echo "| two instances, no cluster | A (own backend connection) | $(fan_row "$L_A") |"
  echo "| two instances, no cluster | B (own backend connection) | $(fan_row "$L_B") |"
  echo "| cluster | A ($ROLE_A) | $(fan_row "$C_A") |"
  echo "| cluster | B ($ROLE_B) | $(fan_row "$C_B") |"
  echo
  echo "Redis per published message: $REDIS_NET_US_PER_MSG µs of CPU ($REDIS_US_PER_MSG µs before taking off what Redis"
  echo "spends idle) and $REDIS_CMDS_PER_MSG commands (the append and its TTL, one read by each instance, and"
  echo "the constant chatter below spread over the messages)."
  echo
  echo "Idle cluster: $IDLE idle SSE clients over the two instances cost Redis $IDLE_OPS commands/s in all"
  echo "and $REDIS_IDLE_SHARE% of a core: heartbeats, lease renewals and one blocking read per route and per"
  echo "instance, nothing per client."
  echo
  echo "## Targets"
  echo
  python3 - "$SY_SSE" "$SY_WS" "$SY_POLL" "$FAN_JSON_FILE" "$E_SY" "$E_NG" "$FAN" "$SY_PASS" "$NG_PASS" "$NC_SSE" "$NC_WS" "$D_SY" "$HOLD" "$SY_SJX" "$SN_SJX" "$SY_SJE" "$SN_SJE" "$SY_WSD" "$Z_SY_OFF" "$Z_SY_ON" "$Z_NC_OFF" "$P_SY" "$P_NC" "$WORK/results.txt" "$ECHO_ROUNDS" "$C_SY" "$C_NC" "$CM_SY" <<'PY'
import json, sys
sse, ws, poll = (json.loads(a) for a in sys.argv[1:4])
fan = [json.loads(l) for l in open(sys.argv[4])]
esy, eng = json.loads(sys.argv[5]), json.loads(sys.argv[6])
subs = sys.argv[7]
spass, npass, nsse, nws, dsy = (json.loads(a) for a in sys.argv[8:13])
hold = int(sys.argv[13])
sjx, njx, sje, nje = (json.loads(a) for a in sys.argv[14:18])
wsd, zoff, zon, znc = (json.loads(a) for a in sys.argv[18:22])
psy, pnc = json.loads(sys.argv[22]), json.loads(sys.argv[23])
http = {}
for line in open(sys.argv[24]):
    if line.startswith("http "):
        d = json.loads(line[line.index("{"):])
        http[(d["mode"], d["connections"], d["threads"], d["server"])] = d
echo_rounds = sys.argv[25]
csy, cnc, cmsy = (json.loads(a) for a in sys.argv[26:29])
def ok(b): return "met" if b else "**not met**"
def sustained(server):
    rows = [r for r in fan if r["server"] == server and r["transport"] == "sse" and r["gaps"] == 0 and r["duplicates"] == 0 and r["connected"] == r["clients"] and r["delivered_ratio"] >= 0.99]
    return max(rows, key=lambda r: r["deliveries_per_s"], default=None)
sy, nc = sustained("switchyard"), sustained("nchan")
sy_d = sy["deliveries_per_s"] if sy else 0
nc_d = nc["deliveries_per_s"] if nc else 0
if not nc:
    # Nchan delivered fully at no rate tried: compare with the most it delivered anywhere.
    best = max((r for r in fan if r["server"] == "nchan" and r["transport"] == "sse"), key=lambda r: r["deliveries_per_s"], default=None)
    nc = dict(best, rate=f"{best['rate']} (incomplete: {best['delivered_ratio']:.0%} delivered)") if best else None
    nc_d = best["deliveries_per_s"] if best else 0
print("| target | figure | verdict |")
print("|---|---|---|")
print(f"| idle SSE client <= 16 KiB | {sse['kib_per_client']} KiB | {ok(sse['kib_per_client'] <= 16)} |")
print(f"| terminated idle WebSocket <= 24 KiB | {ws['kib_per_client']} KiB | {ok(ws['kib_per_client'] <= 24)} |")
print(f"| fan-out deliveries/s >= 2x Nchan (highest rate each delivers fully) | switchyard {sy_d:.0f}/s at {sy['rate'] if sy else '-'} msg/s, Nchan {nc_d:.0f}/s at {nc['rate'] if nc else '-'} msg/s: {sy_d / nc_d if nc_d else 0:.2f}x (switchyard's figure is the highest rate tried, not its limit) | {ok(nc_d and sy_d >= 2 * nc_d)} |")
p99 = sy["p99_ms"] if sy else 0
print(f"| fan-out p99 < 100 ms at 10,000 subscribers | {p99:.1f} ms at {subs} subscribers | {ok(sy and p99 < 100 and int(subs) >= 10000)} |")
print(f"| pass-through WS round trips/s >= nginx's, p99 <= nginx's (median of {echo_rounds} rounds) | {esy['round_trips_per_s']:.0f}/s vs {eng['round_trips_per_s']:.0f}/s, p99 {esy['p99_ms']:.2f} vs {eng['p99_ms']:.2f} ms | {ok(esy['round_trips_per_s'] >= eng['round_trips_per_s'] and esy['p99_ms'] <= eng['p99_ms'])} |")
for threads, conns in ((1, 64), (2, 64)):
    for mode in ("get", "post"):
        a, b = http.get((mode, conns, threads, "switchyard")), http.get((mode, conns, threads, "nginx"))
        if not (a and b):
            continue
        p99_bar = threads == 1
        figure = f"{a['requests_per_s']:.0f} vs {b['requests_per_s']:.0f} req/s ({a['vs_nginx']:.2f}x), p99 {a['p99_ms']:.2f} vs {b['p99_ms']:.2f} ms"
        met = a["requests_per_s"] >= b["requests_per_s"] and (not p99_bar or a["p99_ms"] <= b["p99_ms"])
        bar = "req/s >= nginx's, p99 <= nginx's" if p99_bar else "req/s >= nginx's with two workers"
        print(f"| plain HTTP {mode.upper()}, {conns} connections, {threads} thread(s): {bar} | {figure} | {ok(met)} |")
pfull = psy["delivered_ratio"] >= 0.99 and psy["gaps"] == 0 and psy["duplicates"] == 0
print(f"| long-poll p50 and p99 <= Nchan's, full delivery (median of {psy.get('rounds', 1)} rounds) | p50 {psy['p50_ms']:.1f} vs {pnc['p50_ms']:.1f} ms, p99 {psy['p99_ms']:.1f} vs {pnc['p99_ms']:.1f} ms, {psy['delivered_ratio']:.4f} delivered | {ok(pfull and psy['p50_ms'] <= pnc['p50_ms'] and psy['p99_ms'] <= pnc['p99_ms'])} |")
print(f"| WebSocket fan-out server CPU per delivery <= Nchan's (~1 KiB JSON) | {zoff['server_cpu_us_per_delivery']:.2f} vs {znc['server_cpu_us_per_delivery']:.2f} µs | {ok(zoff['server_cpu_us_per_delivery'] <= znc['server_cpu_us_per_delivery'])} |")
low = min((r["rate"] for r in fan if r["transport"] == "sse"), default=None)
ssy = next((r for r in fan if r["server"] == "switchyard" and r["transport"] == "sse" and r["rate"] == low), None)
snc = next((r for r in fan if r["server"] == "nchan" and r["transport"] == "sse" and r["rate"] == low), None)
if ssy and snc and "server_cpu_us_per_delivery" in ssy and "server_cpu_us_per_delivery" in snc:
    print(f"| SSE fan-out server CPU per delivery <= Nchan's ({low} msg/s) | {ssy['server_cpu_us_per_delivery']:.2f} vs {snc['server_cpu_us_per_delivery']:.2f} µs | {ok(ssy['server_cpu_us_per_delivery'] <= snc['server_cpu_us_per_delivery'])} |")
print(f"| pass-through idle tunnel <= nginx's | {spass['kib_per_client']} KiB vs {npass['kib_per_client']} KiB | {ok(spass['kib_per_client'] <= npass['kib_per_client'])} |")
print(f"| idle SSE client <= Nchan's | {sse['kib_per_client']} KiB vs {nsse['kib_per_client']} KiB | {ok(sse['kib_per_client'] <= nsse['kib_per_client'])} |")
print(f"| idle terminated WebSocket <= Nchan's | {ws['kib_per_client']} KiB vs {nws['kib_per_client']} KiB | {ok(ws['kib_per_client'] <= nws['kib_per_client'])} |")
print(f"| idle SockJS session <= sockjs-node's (xhr_streaming, eventsource) | {sjx['kib_per_client']} vs {njx['kib_per_client']} KiB, {sje['kib_per_client']} vs {nje['kib_per_client']} KiB | {ok(sjx['kib_per_client'] <= njx['kib_per_client'] and sje['kib_per_client'] <= nje['kib_per_client'])} |")
print(f"| every tunnel closed with 1001 on a drain | {dsy['closed_1001']} of {hold} | {ok(dsy['closed_1001'] == hold)} |")
print(f"| idle compressed WebSocket within 1 KiB of an uncompressed one | {wsd['kib_per_client']} vs {ws['kib_per_client']} KiB | {ok(wsd['kib_per_client'] - ws['kib_per_client'] <= 1)} |")
def share(d): return d["wire_bytes_per_delivery"] / zoff["wire_bytes_per_delivery"] if zoff["wire_bytes_per_delivery"] else 0
print(f"| compressed fan-out: fewer bytes, about the same CPU per delivery | {zon['wire_bytes_per_delivery']:.0f} vs {zoff['wire_bytes_per_delivery']:.0f} bytes ({share(zon):.2f}x), {zon['server_cpu_us_per_delivery']:.2f} vs {zoff['server_cpu_us_per_delivery']:.2f} µs, p99 {zon['p99_ms']:.1f} vs {zoff['p99_ms']:.1f} ms | {ok(share(zon) < 0.5 and zon['server_cpu_us_per_delivery'] <= 1.25 * zoff['server_cpu_us_per_delivery'])} |")
cfull = csy["delivered_ratio"] >= 0.99 and csy["gaps"] == 0 and csy["duplicates"] == 0
print(f"| channels: CPU per delivery and p99 <= Nchan's, full delivery (median of {csy.get('rounds', 1)} rounds) | {csy['server_cpu_us_per_delivery']:.2f} vs {cnc['server_cpu_us_per_delivery']:.2f} µs, p99 {csy['p99_ms']:.2f} vs {cnc['p99_ms']:.2f} ms, {csy['delivered_ratio']:.4f} delivered | {ok(cfull and csy['server_cpu_us_per_delivery'] <= cnc['server_cpu_us_per_delivery'] and csy['p99_ms'] <= cnc['p99_ms'])} |")
print(f"| an open channel with no subscriber <= 2 KiB | {cmsy['bytes_per_channel']:.0f} bytes | {ok(cmsy['bytes_per_channel'] <= 2048)} |")
cpu = max(sse["cpu_share_of_one_core"], ws["cpu_share_of_one_core"], poll["cpu_share_of_one_core"])
print(f"| idle clients cost < 5% of one core | {cpu * 100:.1f}% (worst of SSE, WS, long-poll) | {ok(cpu < 0.05)} |")
PY
  echo
  echo "## Raw results"
  echo
  echo '```'
  cat "$WORK/results.txt"
  echo '```'
} >"$OUT"
echo "wrote $OUT" >&2
if [ -z "$CHARTS" ]; then
  echo "bench/charts.py failed (above): $OUT has this run's results but no charts; once fixed, draw them with bench/charts.py --from-markdown $OUT and add the embeds" >&2
  exit 1
fi
