#!/usr/bin/env bash
# What the access log costs on plain HTTP pass-through: two release gateways in front of one
# nginx (a 2-byte answer), one with `access_log: { format: json, to: FILE }` and one without,
# loaded in turn by wrk with keep-alive connections; and the same pair of nginx proxies (one
# worker, `access_log` to a file with a JSON `log_format` of the same fields, and off) as the
# peer. The proxies and the answering nginx share core 0, wrk runs on core 1. Prints
# requests/s and p99 per run and the ratio of the medians for each.
#
#   bench/access-log.sh            # 3 rounds of 10 s each way
#   ROUNDS=5 SECONDS_PER_RUN=20 bench/access-log.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONNECTIONS=${CONNECTIONS:-64}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx is needed: apt-get install nginx" >&2; exit 1; }
cargo build --release --locked --quiet --bin switchyard
BIN=target/release/switchyard

WORK=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx;
  proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx;
  scgi_temp_path $WORK/nginx;
  server { listen 127.0.0.1:8190; location / { return 200 "ok"; } }
}
EOF
taskset -c 0 nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;' >"$WORK/nginx/out.log" 2>&1 &
PIDS+=($!)
mkdir -p "$WORK/proxy"
cat >"$WORK/proxy/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/proxy/nginx.pid;
error_log $WORK/proxy/error.log warn;
events { worker_connections 4096; }
http {
  client_body_temp_path $WORK/proxy;
  proxy_temp_path $WORK/proxy;
  fastcgi_temp_path $WORK/proxy;
  uwsgi_temp_path $WORK/proxy;
  scgi_temp_path $WORK/proxy;
  log_format json escape=json '{"time":"\$time_iso8601","client":"\$remote_addr","method":"\$request_method","path":"\$uri","protocol":"\$server_protocol","status":\$status,"duration":\$request_time,"bytes_in":\$request_length,"bytes_out":\$bytes_sent,"referer":"\$http_referer","user_agent":"\$http_user_agent"}';
  upstream answer { server 127.0.0.1:8190; keepalive 64; }
  server { listen 127.0.0.1:8193; access_log off;
    location / { proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://answer; } }
  server { listen 127.0.0.1:8194; access_log $WORK/proxy/access.log json;
    location / { proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://answer; } }
}
EOF
taskset -c 0 nginx -c "$WORK/proxy/nginx.conf" -g 'daemon off;' >"$WORK/proxy/out.log" 2>&1 &
PIDS+=($!)

gateway() { # name port admin extra-server-yaml
  cat >"$WORK/$1.yaml" <<EOF
# switchyard: access-log benchmark ($1)
server:
  listen:
    - addr: "127.0.0.1:$2"
  admin: "127.0.0.1:$3"
  threads: 1
  shutdown_grace: 1s
$4
routes:
  - name: api
    path: /
    proxy: { upstreams: ["127.0.0.1:8190"] }
EOF
  taskset -c 0 "$BIN" --config "$WORK/$1.yaml" --log-level warn >"$WORK/$1.out" 2>&1 &
  PIDS+=($!)
}
gateway off 8191 8291 ""
gateway json 8192 8292 "  access_log: { format: json, to: $WORK/access.log }"
for port in 8190 8191 8192 8193 8194; do
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.1; done
done

run() { # port -> "requests/s p99_ms"
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "http://127.0.0.1:$1/" |
    awk '/Requests\/sec/ {r=$2} /^ *99%/ {p=$2; if (p ~ /us$/) {sub(/us$/,"",p); p/=1000} else if (p ~ /ms$/) {sub(/ms$/,"",p)} else if (p ~ /s$/) {sub(/s$/,"",p); p*=1000}} END {printf "%s %.2f\n", r, p}'
}
off=(); json=(); noff=(); njson=()
for i in $(seq "$ROUNDS"); do
  # Alternate which goes first, so neither always runs on a warmer machine.
  if ((i % 2)); then a=$(run 8191); b=$(run 8192); c=$(run 8193); d=$(run 8194)
  else b=$(run 8192); a=$(run 8191); d=$(run 8194); c=$(run 8193); fi
  echo "round $i: switchyard off: $a   json: $b   nginx off: $c   json: $d (requests/s, p99 ms)"
  off+=("${a%% *}"); json+=("${b%% *}"); noff+=("${c%% *}"); njson+=("${d%% *}")
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a/b}'; }
mo=$(median "${off[@]}"); mj=$(median "${json[@]}"); no=$(median "${noff[@]}"); nj=$(median "${njson[@]}")
echo "median requests/s: switchyard off $mo, json $mj (ratio $(ratio "$mj" "$mo")); nginx off $no, json $nj (ratio $(ratio "$nj" "$no"))"
lines=$(wc -l <"$WORK/access.log")
dropped=$(curl -fsS http://127.0.0.1:8292/metrics | awk '/^switchyard_access_log_dropped_total/ {print $2}')
echo "switchyard's access log: $lines lines written, $dropped dropped; nginx's: $(wc -l <"$WORK/proxy/access.log") lines"
