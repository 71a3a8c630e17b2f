#!/usr/bin/env bash
# The long conformance runs, kept out of `.ci/run` for time: run before a release and before
# resolving any change that touches framing, and give the result in its closing note.
#
#   scripts/conformance.sh            Autobahn's fuzzingclient, all 517 cases on both terminated
#                                     paths (the builtin echo and a bridged per-client route),
#                                     permessage-deflate's 12.* and 13.* included: about 9
#                                     minutes on 2 cores (CI runs sections 1-10 and the first case
#                                     of each compression group)
##                                     Then the Engine.IO and Socket.IO protocols' own suites
#                                     (scripts/protocol-suites.sh), from clones of
#                                     github.com/socketio/engine.io-protocol and
#                                     socket.io-protocol named by ENGINEIO_PROTOCOL_DIR and
#                                     SOCKETIO_PROTOCOL_DIR (CI cannot fetch them): seconds
#                                     Then the SockJS protocol's suite (scripts/sockjs-suite.sh,
#                                     68 tests, Python 2.7) from a clone of
#                                     github.com/sockjs/sockjs-protocol named by
#                                     SOCKJS_PROTOCOL_DIR: seconds
#
# Installs what it needs first (scripts/install-deps.sh --test). Exits non-zero on any failed or
# unimplemented case.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${ENGINEIO_PROTOCOL_DIR:?set ENGINEIO_PROTOCOL_DIR to a clone of github.com/socketio/engine.io-protocol (git clone https://github.com/socketio/engine.io-protocol)}"
: "${SOCKETIO_PROTOCOL_DIR:?set SOCKETIO_PROTOCOL_DIR to a clone of github.com/socketio/socket.io-protocol (git clone https://github.com/socketio/socket.io-protocol)}"
: "${SOCKJS_PROTOCOL_DIR:?set SOCKJS_PROTOCOL_DIR to a clone of github.com/sockjs/sockjs-protocol (git clone https://github.com/sockjs/sockjs-protocol)}"
bash scripts/install-deps.sh --test
started=$(date +%s)
echo "== Autobahn testsuite, all 517 cases x 2 paths"
SWITCHYARD_AUTOBAHN=full cargo test --locked --test suite autobahn:: -- --nocapture
echo "== Engine.IO and Socket.IO protocol suites"
bash scripts/protocol-suites.sh
echo "== SockJS protocol suite"
bash scripts/sockjs-suite.sh
echo "== conformance passed in $(( $(date +%s) - started )) s"
