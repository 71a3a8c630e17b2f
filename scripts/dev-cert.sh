#!/usr/bin/env bash
# Makes a self-signed development certificate for localhost / 127.0.0.1 in certs/ (or $1).
# For local TLS testing only: certs/ is git-ignored, and this key must never serve real traffic.
set -euo pipefail
out="${1:-$(dirname "$0")/../certs}"
mkdir -p "$out"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$out/dev.key" -out "$out/dev.crt" 2>/dev/null
echo "wrote $out/dev.crt and $out/dev.key (self-signed, 30 days)"
