#!/usr/bin/env bash
# The Engine.IO and Socket.IO protocols' own conformance suites (mocha, under node) against
# switchyard, at the address they hard-code (127.0.0.1:3000):
#   - engine.io-protocol `test-suite/`, branches main (protocol 4, 24 tests) and v3 (protocol 3,
#     23 tests and one the suite skips), at /engine.io/, through switchyard to a plain
#     WebSocket echo backend (tests/engineio/echo-backend.js);
#   - socket.io-protocol `test-suite/`, branch fix/waitfor (32 tests; main's `waitFor()` loses
#     one of two frames that arrive in one read, against the reference server too), at
#     /socket.io/, through switchyard to a plain WebSocket backend written to the mapping
#     (tests/socketio/backend.js).
#
#   ENGINEIO_PROTOCOL_DIR=<clone of github.com/socketio/engine.io-protocol> \
#   SOCKETIO_PROTOCOL_DIR=<clone of github.com/socketio/socket.io-protocol> scripts/protocol-suites.sh
#
# The v3 suite is run with one line taken out: its "WebSocket > sends and receives a plain text
# packet" awaits `open` before it listens for the open packet, which arrives in the same read as
# the 101 and is then lost; the reference server (engine.io 6) fails it in 7 runs of 10 so. The
# copy that listens first is what runs here. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
eio_repo="${ENGINEIO_PROTOCOL_DIR:?set ENGINEIO_PROTOCOL_DIR to a clone of github.com/socketio/engine.io-protocol}"
sio_repo="${SOCKETIO_PROTOCOL_DIR:?set SOCKETIO_PROTOCOL_DIR to a clone of github.com/socketio/socket.io-protocol}"
tools="${SWITCHYARD_TOOLS:-$HOME/.cache/switchyard-tools}"
export NODE_PATH="$tools/node/node_modules"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

if (echo > /dev/tcp/127.0.0.1/3000) 2>/dev/null; then
  echo "127.0.0.1:3000 is in use: the suites hard-code it, stop what listens there" >&2
  exit 1
fi
# Release: the suites time heartbeats to a few tens of milliseconds (a 1 s connectTimeout
# against a ~950 ms ping/pong test), which a debug build's latency eats into.
cargo build --release --locked --quiet --bin switchyard
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
backend_port=$(free_port)
mapped_port=$(free_port)
admin_port=$(free_port)
node tests/engineio/echo-backend.js "$backend_port" & pids+=($!)
node tests/socketio/backend.js "$mapped_port" & pids+=($!)
cat > "$work/gateway.yaml" <<YAML
server:
  listen:
    - addr: "127.0.0.1:3000"
  admin: "127.0.0.1:$admin_port"
routes:
  - name: suite
    path: /engine.io
    backend: { websocket: "ws://127.0.0.1:$backend_port/" }
    fanout: per_client
    clients: [engineio]
    keepalive: { ping_interval: 300ms, pong_timeout: 200ms }
    limits: { max_message: 1000000 }
  - name: socketio-suite
    path: /socket.io
    backend: { websocket: "ws://127.0.0.1:$mapped_port/" }
    fanout: per_client
    clients: [socketio]
    socketio: { namespaces: ["/", "/custom"], connect_timeout: 1s }
    keepalive: { ping_interval: 300ms, pong_timeout: 200ms }
    limits: { max_message: 1000000 }
YAML
target/release/switchyard --config "$work/gateway.yaml" > "$work/switchyard.log" 2>&1 & pids+=($!)
for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/3000) 2>/dev/null && break; sleep 0.1; done

failed=0
for run in engine.io-protocol:main engine.io-protocol:v3 socket.io-protocol:fix/waitfor; do
  name=${run%%:*}
  branch=${run#*:}
  repo=$eio_repo
  [ "$name" = socket.io-protocol ] && repo=$sio_repo
  dir="$work/$name-${branch//\//-}"
  mkdir -p "$dir"
  git -C "$repo" archive "$branch" test-suite | tar -x -C "$dir"
  suite="$dir/test-suite"
  if [ "$run" = engine.io-protocol:v3 ]; then
    python3 - "$suite/test-suite.js" <<'PY'
import sys
path = sys.argv[1]
s = open(path).read()
test = s.index('it("sends and receives a plain text packet", async () => {\n        const socket = new WebSocket(')
wait = s.index('await waitFor(socket, "open");\n', test)
s = s[:wait] + s[wait + len('await waitFor(socket, "open");\n'):]
open(path, "w").write(s)
PY
  fi
  (cd "$suite" && npm ci --no-audit --no-fund --silent)
  echo "== $name $branch test-suite"
  if ! (cd "$suite" && npx mocha test-suite.js); then
    failed=1
  fi
done
exit "$failed"
