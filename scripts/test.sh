#!/usr/bin/env bash
# The whole test suite, as the README gives it. Safe to run on a fresh machine: it prepares what
# it needs (a Python venv with moto for the AWS tests) and then runs every check CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n== %s == (at %ds)\n' "$*" "$SECONDS"; }

step "python venv with moto (AWS tests run against moto's server)"
if [ ! -x .venv/bin/moto_server ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check 'moto==5.2.*' flask flask-cors boto3
fi
export CAUSEWAY_MOTO_SERVER="$PWD/.venv/bin/moto_server"

step "Debian packages the tests use (nginx: PROXY protocol peer and origin; curl: h2 client; wrk: load; slowhttptest)"
if ! [ -x /usr/sbin/nginx ] || ! command -v curl >/dev/null || ! command -v wrk >/dev/null \
  || ! command -v slowhttptest >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light curl wrk slowhttptest >/dev/null
  else
    echo "nginx or curl is not installed and this is not root: tests that need them will fail"
  fi
fi

step "minimum versions of h2, quinn-proto and rustls (known advisories fixed)"
python3 scripts/min_versions.py

step "cargo deny: licenses, bans, sources; advisories live or from an offline copy"
bash scripts/deny.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build (bins, for --check and end-to-end tests)"
cargo build --workspace --bins --locked

step "--check every example"
for f in examples/*.toml; do
  case "$(basename "$f")" in
    alb*) bin=causeway-alb ;;
    nlb*) bin=causeway-nlb ;;
    edge*) bin=causeway-edge ;;
    control*) bin=causeway-control ;;
    *) echo "no binary for $f"; exit 1 ;;
  esac
  printf '%-28s ' "$f"
  "target/debug/$bin" --check "$f"
done

step "cargo test"
cargo test --workspace --locked

step "demo smoke run (causeway-control demo --once: every plane up on the ports contract)"
out=$(timeout 60 target/debug/causeway-control demo --once 2>&1) || { echo "$out"; exit 1; }
echo "$out" | tail -8
for plane in alb.toml alb-2.toml nlb.toml edge.toml; do
  echo "$out" | grep -q "^$plane *gen 1 " || { echo "demo: $plane is not up"; exit 1; }
done
echo "$out" | grep -q "^pipeline GET / via the edge: HTTP/1.1 200 OK (Hit from causeway)" \
  || { echo "$out"; echo "demo: the second GET through the pipeline was not an edge hit"; exit 1; }

step "reload under load: 100 SIGHUPs (one broken config) during wrk through alb, nlb, edge"
python3 benches/reliability/reload_under_load.py --bin-dir target/debug --seconds 8

step "slow clients: slowloris, slow POST, slow read (slowhttptest) against the alb"
python3 benches/reliability/slow_clients.py --bin-dir target/debug

step "UDP flood with spoofed sources in a network namespace (caps hold, nothing amplified)"
if [ "$(id -u)" = 0 ]; then
  python3 benches/reliability/udp_flood.py --bin-dir target/debug
else
  echo "not root: no network namespace, UDP flood skipped"
fi

step "client IP preservation across three network namespaces (the target sees the client)"
if [ "$(id -u)" = 0 ]; then
  python3 benches/reliability/client_ip_netns.py --bin-dir target/debug
else
  echo "not root: no network namespace, client IP preservation across hosts skipped"
fi

step "fuzz every parser target for 60 s (cargo-fuzz, libFuzzer)"
bash scripts/fuzz.sh 60

step "cargo bench --no-run (the criterion benches and the h3load client)"
cargo bench -p causeway-benches --locked --no-run

step "all checks passed"
