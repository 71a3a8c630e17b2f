#!/usr/bin/env bash
# The SockJS protocol's own conformance suite (sockjs-protocol.py, Python 2.7) against
# switchyard, with the routes it expects (/echo, /close, /disabled_websocket_echo,
# /cookie_needed_echo) bridged per client to a plain WebSocket backend
# (tests/sockjs/suite-backend.js). 68 tests; exits non-zero unless every one passes.
#
#   SOCKJS_PROTOCOL_DIR=<clone of github.com/sockjs/sockjs-protocol> scripts/sockjs-suite.sh
#
# Python 2.7: PYTHON2, else python2.7 on the PATH, else pyenv's 2.7.18. What the suite's
# requirements.txt lists (websocket-client 0.59, the last for Python 2; unittest2; ws4py) is
# installed once into $SWITCHYARD_TOOLS/sockjs-py2.
set -euo pipefail
cd "$(dirname "$0")/.."
suite="${SOCKJS_PROTOCOL_DIR:?set SOCKJS_PROTOCOL_DIR to a clone of github.com/sockjs/sockjs-protocol}"
tools="${SWITCHYARD_TOOLS:-$HOME/.cache/switchyard-tools}"
export NODE_PATH="$tools/node/node_modules"
py2="${PYTHON2:-}"
for candidate in python2.7 "$HOME/.pyenv/versions/2.7.18/bin/python"; do
  [ -n "$py2" ] && break
  "$candidate" -c 'import sys; assert sys.version_info[0] == 2' 2>/dev/null && py2="$candidate"
done
[ -n "$py2" ] || { echo "no Python 2.7 (set PYTHON2): the suite is Python 2 only" >&2; exit 1; }
deps="$tools/sockjs-py2"
if ! PYTHONPATH="$deps" "$py2" -c 'import websocket, unittest2, ws4py' 2>/dev/null; then
  "$py2" -m pip install --quiet --disable-pip-version-check --upgrade \
    --target "$deps" 'websocket-client==0.59.0' unittest2 'ws4py==0.5.1'
fi
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cargo build --release --locked --quiet --bin switchyard
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
backend_port=$(free_port)
port=$(free_port)
admin_port=$(free_port)
node tests/sockjs/suite-backend.js "$backend_port" & pids+=($!)
per_client="fanout: per_client"
echo_backend="backend: { websocket: \"ws://127.0.0.1:$backend_port/echo\", forward_headers: [] }"
cat > "$work/gateway.yaml" <<YAML
server:
  listen:
    - addr: "127.0.0.1:$port"
  admin: "127.0.0.1:$admin_port"
defaults:
  origins: ["*", "null"]
routes:
  - name: echo
    path: /echo
    $per_client
    clients: [websocket, sockjs]
    sockjs: { response_limit: 4KiB }
    $echo_backend
  - name: close
    path: /close
    $per_client
    clients: [sockjs]
    backend: { websocket: "ws://127.0.0.1:$backend_port/close", forward_headers: [] }
  - name: disabled_websocket_echo
    path: /disabled_websocket_echo
    $per_client
    clients: [sockjs]
    sockjs: { websocket: false }
    $echo_backend
  - name: cookie_needed_echo
    path: /cookie_needed_echo
    $per_client
    clients: [sockjs]
    sockjs: { cookie_needed: true }
    $echo_backend
YAML
target/release/switchyard --config "$work/gateway.yaml" --log-level warn 2>"$work/gateway.log" & pids+=($!)
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
cd "$suite"
if SOCKJS_URL="http://127.0.0.1:$port" PYTHONPATH="$deps" "$py2" sockjs-protocol.py 2>"$work/suite.txt"; then
  tail -3 "$work/suite.txt"
else
  cat "$work/suite.txt" >&2
  echo "sockjs-protocol failed; gateway log:" >&2
  tail -20 "$work/gateway.log" >&2
  exit 1
fi
