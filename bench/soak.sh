#!/usr/bin/env bash
# The soak: a cluster of two switchyard instances and Redis, on this machine, held under about
# 10,000 clients for an hour while the backend is killed every 5 minutes, the config is reloaded
# every minute and Redis is restarted once. Result in docs/SOAK.md.
#
#   bench/soak.sh            # the hour (about 62 minutes with set-up and drain)
#   bench/soak.sh --quick    # 2 minutes, 2,000 clients, faults every 20-40 s: for developers
#   KEEP=1 bench/soak.sh     # keep the work directory (logs, samples.csv, result.json)
#   SOAK_SECONDS=600 SOAK_SCALE=0.5 bench/soak.sh   # another length or client count
#
# The clients (switchyard-bench soak): SSE and long-poll subscribers that resume across
# reconnects and across instances, WebSocket and SockJS (xhr_streaming) subscribers, pass-through
# WebSocket tunnels doing echo round trips, and per-client long-poll sessions opened and
# abandoned. Every client leaves after a random lifetime and comes back (to the other
# instance). Each checks order, duplicates and gaps against the backend's log of what it wrote
# (serve --seq-log); a gap the gateway announced, or one sent while Redis was down (documented in
# the README's failure table), is explained, anything else fails the run.
#
# Every 10 s: each instance's RSS, open file descriptors and open gauges (samples.csv). At the
# end bench/soak_report.py writes the report: docs/SOAK.md (and docs/bench/soak-rss.svg) for
# the hour, SOAK.md in the work directory for --quick; REPORT=path writes it elsewhere.
# Pass: the clients' verdict, no panic in either log, every open gauge and the fd count back to
# the baseline after the drain, every reload applied; the RSS slope after warm-up is reported.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
[[ ${1:-} == --quick ]] && QUICK=1
if ((QUICK)); then
  DURATION=${SOAK_SECONDS:-120}; SCALE=${SOAK_SCALE:-0.2}
  KILL_EVERY=40; RELOAD_EVERY=20; REDIS_AT=70; WARMUP=30; MIN_LIFE=10; MAX_LIFE=60
else
  DURATION=${SOAK_SECONDS:-3600}; SCALE=${SOAK_SCALE:-1}
  KILL_EVERY=300; RELOAD_EVERY=60; REDIS_AT=$((DURATION / 2 + 30)); WARMUP=600; MIN_LIFE=30; MAX_LIFE=600
fi
RATE=${SOAK_RATE:-4}
scaled() { python3 -c "print(max(1, round($1 * $SCALE)))"; }
SSE=$(scaled 3000); WS=$(scaled 3000); POLL=$(scaled 2000); SOCKJS=$(scaled 1000); TUNNELS=$(scaled 1000)

command -v redis-server >/dev/null || { echo "redis-server is needed: apt-get install redis-server" >&2; exit 1; }
cargo build --release --locked --quiet --bin switchyard --bin switchyard-bench
BIN=target/release/switchyard
BENCH=target/release/switchyard-bench

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  kill "${PIDS[@]}" "${BACKEND_PID:-}" "${REDIS_PID:-}" 2>/dev/null || true
  wait 2>/dev/null || true
  if [[ ${KEEP:-0} == 1 ]]; then echo "kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
ulimit -n 19000 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
REDIS_PORT=$(free_port); BACKEND_PORT=$(free_port)
GW_PORT=("$(free_port)" "$(free_port)"); ADMIN_PORT=("$(free_port)" "$(free_port)")
now_ms() { date +%s%3N; }
event() { echo "$(now_ms) $1" >>"$WORK/events.log"; echo "[$(date +%T)] $1" >&2; }

start_redis() {
  mkdir -p "$WORK/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$WORK/redis" >>"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "redis did not start" >&2; exit 1
}
start_backend() {
  "$BENCH" serve --listen "127.0.0.1:$BACKEND_PORT" --rate "$RATE" --size 100 \
    --seq-log "$WORK/sent.log" >>"$WORK/backend.log" 2>&1 &
  BACKEND_PID=$!
}

# Instance N's config; MARK changes on each reload (a route added or taken away), so a reload
# rebuilds the routes for real while the feed itself is unchanged.
write_config() {
  local n=$1 mark=$2 extra=""
  if ((mark % 2)); then
    extra="  - name: marker
    path: /marker-$mark
    proxy: { upstreams: [\"127.0.0.1:$BACKEND_PORT\"] }"
  fi
  cat >"$WORK/gw$n.yaml.new" <<EOF
server:
  listen: [{ addr: "127.0.0.1:${GW_PORT[$n]}" }]
  admin: "127.0.0.1:${ADMIN_PORT[$n]}"
  threads: 1
  shutdown_grace: 5s
  limits: { memory: 1GiB }
cluster:
  redis: "redis://127.0.0.1:$REDIS_PORT/"
  node: "soak-$n"
  prefix: "soak"
  lease_ttl: 3s
defaults:
  origins: ["*"]
  keepalive: { ping_interval: 20s, pong_timeout: 10s, sse_heartbeat: 15s, poll_timeout: 25s, idle_timeout: 5m }
  limits: { max_message: 64KiB, send_queue: 1024, max_clients: 20000 }
routes:
  - name: feed
    path: /feed
    clients: [sse, websocket, long_poll, sockjs]
    sockjs: { disconnect_delay: 5s }
    backend: { websocket: "ws://127.0.0.1:$BACKEND_PORT/feed", reconnect: { initial: 100ms, max: 1s } }
    replay: 4096
    backend_linger: 10s
  - name: session
    path: /session
    fanout: per_client
    session_ttl: 10s
    clients: [long_poll]
    backend: { websocket: "ws://127.0.0.1:$BACKEND_PORT/session", forward_headers: [] }
  - name: echo
    path: /echo
    proxy: { upstreams: ["127.0.0.1:$BACKEND_PORT"] }
$extra
EOF
  mv "$WORK/gw$n.yaml.new" "$WORK/gw$n.yaml"
}

metric_sum() { # metrics text, metric name: the sum of its series
  awk -v m="$2" 'index($1, m "{") == 1 || $1 == m { s += $2 } END { printf "%d", s }' <<<"$1"
}
sample() { # the CSV line for instance N
  local n=$1 pid=${PIDS[$1]} m rss fds
  m=$(curl -s "http://127.0.0.1:${ADMIN_PORT[$n]}/metrics")
  rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
  fds=$(ls "/proc/$pid/fd" | wc -l)
  echo "$(now_ms),$n,$rss,$fds,$(metric_sum "$m" switchyard_client_connections_open),$(metric_sum "$m" switchyard_sessions_open),$(metric_sum "$m" switchyard_sockjs_sessions_open),$(metric_sum "$m" switchyard_backend_connections_open),$(metric_sum "$m" switchyard_memory_used_bytes)"
}

start_redis
start_backend
for n in 0 1; do
  write_config "$n" 0
  "$BIN" --config "$WORK/gw$n.yaml" >"$WORK/gw$n.log" 2>&1 &
  PIDS+=($!)
done
for n in 0 1; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:${ADMIN_PORT[$n]}/readyz" >/dev/null && break; sleep 0.1; done
done
sleep 2
echo "ms,instance,rss_kib,fds,client_connections,sessions,sockjs_sessions,backend_connections,memory_used" >"$WORK/samples.csv"
BASE=("$(sample 0)" "$(sample 1)")
printf '%s\n' "${BASE[@]}" >>"$WORK/samples.csv"
cat >"$WORK/params.json" <<EOF
{"seconds": $DURATION, "rate": $RATE, "kill_every": $KILL_EVERY, "reload_every": $RELOAD_EVERY,
 "redis_at": $REDIS_AT, "warmup": $WARMUP, "min_life": $MIN_LIFE, "max_life": $MAX_LIFE,
 "sessions_per_sec": 5, "quick": $QUICK}
EOF
echo "soak: $DURATION s, $SSE SSE + $WS WebSocket + $POLL long-poll + $SOCKJS SockJS + $TUNNELS tunnels, feed at $RATE msg/s" >&2
event start

"$BENCH" soak --json --gateways "127.0.0.1:${GW_PORT[0]},127.0.0.1:${GW_PORT[1]}" \
  --sse "$SSE" --ws "$WS" --poll "$POLL" --sockjs "$SOCKJS" --tunnels "$TUNNELS" \
  --seconds "$DURATION" --min-life "$MIN_LIFE" --max-life "$MAX_LIFE" \
  --seq-log "$WORK/sent.log" --events "$WORK/events.log" >"$WORK/clients.out" 2>"$WORK/clients.err" &
CLIENTS=$!

# The fault schedule, and a sample of each instance every 10 s.
START=$(date +%s); RELOADS=0; KILLS=0; REDIS_DONE=0; NEXT_SAMPLE=0
while kill -0 "$CLIENTS" 2>/dev/null; do
  T=$(($(date +%s) - START))
  if ((T >= NEXT_SAMPLE)); then
    { sample 0; sample 1; } >>"$WORK/samples.csv" || true
    NEXT_SAMPLE=$((NEXT_SAMPLE + 10))
  fi
  if ((T < DURATION - 10)); then
    if ((T >= (KILLS + 1) * KILL_EVERY)); then
      KILLS=$((KILLS + 1)); event backend-kill
      kill -9 "$BACKEND_PID"; wait "$BACKEND_PID" 2>/dev/null || true
      sleep 2; start_backend; event backend-up
    fi
    if ((T >= (RELOADS + 1) * RELOAD_EVERY)); then
      RELOADS=$((RELOADS + 1))
      for n in 0 1; do write_config "$n" "$RELOADS"; kill -HUP "${PIDS[$n]}"; done
      event "reload $RELOADS"
    fi
    if ((!REDIS_DONE && T >= REDIS_AT)); then
      REDIS_DONE=1; event redis-down
      kill -9 "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true
      sleep 5; start_redis; event redis-up
    fi
  fi
  sleep 1
done
CLIENTS_OK=1
wait "$CLIENTS" || CLIENTS_OK=0
event clients-done

# The drain: abandoned sessions (session_ttl 10 s), SockJS sessions (disconnect_delay 5 s) and
# the feed's backend connection (backend_linger 10 s) all end within this.
sleep 40
END=("$(sample 0)" "$(sample 1)")
printf '%s\n' "${END[@]}" >>"$WORK/samples.csv"
event end

PANICS=$(cat "$WORK/gw0.log" "$WORK/gw1.log" | grep -c 'panicked' || true)
RELOADS_OK=$RELOADS
for n in 0 1; do
  applied=$(metric_sum "$(curl -s "http://127.0.0.1:${ADMIN_PORT[$n]}/metrics")" 'switchyard_config_reloads_total{outcome="success"}')
  if ((applied < RELOADS_OK)); then RELOADS_OK=$applied; fi
done
VERDICT=0
python3 - "$WORK" "$WARMUP" "$PANICS" "$RELOADS" "$RELOADS_OK" "$KILLS" "$REDIS_DONE" "$CLIENTS_OK" \
  "${BASE[0]}" "${BASE[1]}" "${END[0]}" "${END[1]}" <<'EOF' >"$WORK/result.json" || VERDICT=1
import csv, json, sys
work, warmup, panics, reloads, reloads_ok, kills, redis, clients_ok = sys.argv[1:9]
base = [l.split(",") for l in sys.argv[9:11]]
end = [l.split(",") for l in sys.argv[11:13]]
cols = ["ms", "instance", "rss_kib", "fds", "client_connections", "sessions", "sockjs_sessions",
        "backend_connections", "memory_used"]
rows = list(csv.DictReader(open(f"{work}/samples.csv")))
t0 = int(rows[0]["ms"])
slopes = {}
for inst in ("0", "1"):
    pts = [((int(r["ms"]) - t0) / 60000, int(r["rss_kib"]) / 1024) for r in rows
           if r["instance"] == inst and (int(r["ms"]) - t0) / 1000 >= int(warmup)]
    pts = pts[:-1]  # the last sample is after the drain
    n = len(pts)
    if n >= 3:
        mx = sum(x for x, _ in pts) / n; my = sum(y for _, y in pts) / n
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        slope = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else 0
        slopes[inst] = {"mib_per_hour": round(slope * 60, 1), "samples": n,
                        "rss_mib_first": round(pts[0][1], 1), "rss_mib_last": round(pts[-1][1], 1),
                        "rss_mib_max": round(max(y for _, y in pts), 1)}
clients = {}
try:
    clients = json.loads(open(f"{work}/clients.out").read().strip().splitlines()[-1])
except Exception as e:
    clients = {"error": str(e)}
back = {}
ok = clients_ok == "1" and panics == "0" and reloads == reloads_ok
for i in range(2):
    b, e = dict(zip(cols, base[i])), dict(zip(cols, end[i]))
    inst = {k: {"start": int(b[k]), "end": int(e[k])} for k in cols[2:]}
    for k in ("client_connections", "sessions", "sockjs_sessions", "backend_connections"):
        ok &= int(e[k]) == int(b[k])
    ok &= int(e["fds"]) <= int(b["fds"])
    back[f"instance_{i}"] = inst
print(json.dumps({"pass": ok, "clients_verdict_ok": clients_ok == "1", "panics": int(panics),
                  "reloads": int(reloads), "reloads_applied": int(reloads_ok),
                  "backend_kills": int(kills), "redis_restarts": int(redis),
                  "rss_slope_after_warmup": slopes, "start_and_end": back, "clients": clients},
                 indent=1))
sys.exit(0 if ok else 1)
EOF
cat "$WORK/result.json"
# The report: docs/SOAK.md for the hour, the work directory's SOAK.md for --quick (KEEP=1 keeps it).
if ((QUICK)); then REPORT=${REPORT:-$WORK/SOAK.md}; else REPORT=${REPORT:-docs/SOAK.md}; fi
python3 bench/soak_report.py "$WORK" --out "$REPORT" --commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  --command "bench/soak.sh${1:+ $1}"
exit "$VERDICT"
