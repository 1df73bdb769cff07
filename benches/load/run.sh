#!/usr/bin/env bash
# Installs the peers from Debian if missing, then runs the side-by-side harness.
# Example: bash benches/load/run.sh --scenario http --rounds 3 --duration 10
set -euo pipefail
need=()
for b in haproxy nginx varnishd wrk h2load curl taskset; do command -v "$b" >/dev/null || need+=("$b"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx-light varnish wrk nghttp2-client curl util-linux >/dev/null
fi
# The distribution's services must not hold the ports or the CPU.
systemctl stop nginx haproxy varnish 2>/dev/null || true
exec python3 "$(dirname "$0")/harness.py" "$@"
