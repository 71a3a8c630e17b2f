#!/usr/bin/env bash
# Socket.IO clients, side by side in one run: switchyard (a shared feed on a `clients:
# [socketio]` route) and the npm `socket.io` 4 server (bench/socketio-peer.js), each on core 0
# and fed the same messages by the benchmark backend (also on core 1 with the load generator).
# The clients are the benchmark's own Socket.IO clients (Engine.IO 4 + Socket.IO 5 on raw
# sockets, as socket.io-client 4 speaks them: the CONNECT to `/`, pongs, events).
#
#   bench/socketio.sh                      # idle memory per client (WebSocket, polling) and a
#                                          # fan-out to 10,000 WebSocket clients at 20 msg/s
#   CLIENTS=2000 FAN=2000 RATE=50 bench/socketio.sh
#   RESULTS=results.txt bench/socketio.sh  # also append each result as "socketio ..." + JSON
#
# Prints a Markdown section (stdout): the rows and each one's ratio to socket.io's.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CLIENTS=${CLIENTS:-10000}   # idle clients per server and transport
FAN=${FAN:-10000}           # fan-out clients
RATE=${RATE:-20}            # fan-out messages per second
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
ulimit -n 19500
bash scripts/install-deps.sh --test >/dev/null
NODE_MODULES="${SWITCHYARD_TOOLS:-$HOME/.cache/switchyard-tools}/node/node_modules"
cargo build --release --locked --bins -q
BENCH="taskset -c 1 $ROOT/target/release/switchyard-bench"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.5; rm -rf "$WORK"' EXIT

start_backend() { # rate
  taskset -c 1 "$ROOT/target/release/switchyard-bench" serve --listen 127.0.0.1:9001 --rate "$1" >"$WORK/backend.log" 2>&1 &
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
  - name: socketio
    path: /socket.io
    clients: [socketio]
    backend: { websocket: "ws://127.0.0.1:9001/feed" }
    keepalive: { ping_interval: 60s, pong_timeout: 60s }
EOF
  taskset -c 0 target/release/switchyard --config "$WORK/gw.yaml" --log-level warn >"$WORK/gw.log" 2>&1 &
  PID=$!
  for _ in $(seq 50); do curl -s -o /dev/null 127.0.0.1:9100/healthz && break; sleep 0.1; done
  PORT=8080
}
start_peer() {
  NODE_PATH="$NODE_MODULES" taskset -c 0 node bench/socketio-peer.js 8086 ws://127.0.0.1:9001/feed >"$WORK/peer.log" 2>&1 &
  PID=$!
  for _ in $(seq 50); do curl -s -o /dev/null "127.0.0.1:8086/socket.io/?EIO=4&transport=polling" && break; sleep 0.1; done
  PORT=8086
}
stop() { kill -INT "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
run() { # label command...
  local label=$1 json; shift
  json=$("$@" --json | tail -1)
  echo "$label $json" >&2
  [ -n "${RESULTS:-}" ] && echo "socketio $label $json" >>"$RESULTS"
  echo "$json"
}
get() { python3 -c 'import json,sys; v = json.loads(sys.argv[1])[sys.argv[2]]; print(v if not isinstance(v, float) else round(v) if abs(v) >= 1000 else "%.4g" % v)' "$1" "$2"; }

declare -A R
start_backend 0
for server in switchyard socketio; do
  for t in ws polling; do
    if [ "$server" = switchyard ]; then start_switchyard; else start_peer; fi
    url="ws://127.0.0.1:$PORT/socket.io/?EIO=4&transport=websocket"
    [ "$t" = polling ] && url="http://127.0.0.1:$PORT/socket.io/"
    R[$server-idle-$t]=$(run "$server idle $t" $BENCH idle --url "$url" --transport "socketio-$t" --clients "$CLIENTS" --pids "$PID")
    stop
  done
done
stop_backend
start_backend "$RATE"
for server in switchyard socketio; do
  if [ "$server" = switchyard ]; then start_switchyard; else start_peer; fi
  R[$server-fan]=$(run "$server fanout $FAN@$RATE/s" $BENCH fanout --url "ws://127.0.0.1:$PORT/socket.io/?EIO=4&transport=websocket" --transport socketio --clients "$FAN" --rate "$RATE" --seconds "$SECONDS_PER_RUN" --pids "$PID")
  stop
done
stop_backend

ratio() { python3 -c 'import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print("%.2fx" % (a / b) if b else "-")' "$1" "$2"; }
echo "## Socket.IO clients: switchyard vs the npm socket.io 4 server"
echo
echo "Both on core 0, fed the same feed; the clients speak Engine.IO 4 / Socket.IO 5 (\`bench/socketio.sh\`)."
echo
echo "| measure | switchyard | socket.io | ratio |"
echo "|---|---|---|---|"
for t in ws polling; do
  a=$(get "${R[switchyard-idle-$t]}" kib_per_client); b=$(get "${R[socketio-idle-$t]}" kib_per_client)
  echo "| idle memory per client, $t ($CLIENTS clients) | $a KiB | $b KiB | $(ratio "$a" "$b") |"
done
for k in deliveries_per_s delivered_ratio p50_ms p99_ms server_cpu_us_per_delivery; do
  a=$(get "${R[switchyard-fan]}" "$k"); b=$(get "${R[socketio-fan]}" "$k")
  echo "| fan-out $FAN WebSocket clients at $RATE msg/s: $k | $a | $b | $(ratio "$a" "$b") |"
done
