#!/usr/bin/env bash
# Installs the system packages switchyard needs on Debian/Ubuntu, only those missing.
#   scripts/install-deps.sh          build: cmake (pingora-core builds zlib-ng)
#   scripts/install-deps.sh --test   also what the tests use: chromium, curl, openssl
set -euo pipefail
need=()
command -v cmake >/dev/null || need+=(cmake)
if [ "${1:-}" = "--test" ]; then
  command -v chromium >/dev/null || need+=(chromium)
  command -v curl >/dev/null || need+=(curl)
  command -v openssl >/dev/null || need+=(openssl)
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing: ${need[*]}"
as_root=()
[ "$(id -u)" -ne 0 ] && as_root=(sudo)
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
