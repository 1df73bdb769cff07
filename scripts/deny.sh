#!/usr/bin/env bash
# Supply chain with cargo deny (deny.toml): licenses, bans and sources always; RustSec advisories
# from the live database when it can be fetched, else from an offline copy: $CAUSEWAY_ADVISORY_DB,
# or one left in ~/.cargo/advisory-dbs by an earlier fetch. With neither, the advisories check is
# reported as skipped (never as passed).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deny >/dev/null || cargo install cargo-deny --locked --version 0.20.2
cargo deny --log-level error check licenses bans sources
if timeout 120 cargo deny --log-level error check advisories 2>/tmp/deny-advisories.log; then
  echo "advisories ok (live RustSec database)"
  exit 0
fi
if ! grep -q "failed to fetch advisory database" /tmp/deny-advisories.log; then
  cat /tmp/deny-advisories.log
  exit 1
fi
offline="${CAUSEWAY_ADVISORY_DB:-}"
if [ -z "$offline" ]; then
  offline=$(ls -d "$HOME"/.cargo/advisory-dbs/*/ 2>/dev/null | while read -r d; do
    [ -d "$d/crates" ] && echo "$d"; done | head -n 1 || true)
fi
if [ -n "$offline" ] && [ -d "$offline/crates" ]; then
  # cargo deny looks for its database as <db-path>/<name it would have cloned to>.
  name=$(grep -o 'advisory-db-[0-9a-f]\{16\}' /tmp/deny-advisories.log | head -n 1)
  dbs=$(mktemp -d)
  ln -s "$(cd "$offline" && pwd)" "$dbs/$name"
  sed "0,/^version = 2$/s||version = 2\ndb-path = \"$dbs\"|" deny.toml > /tmp/deny-offline.toml
  cargo deny --offline --log-level error --config /tmp/deny-offline.toml check advisories || exit 1
  echo "advisories ok (offline copy at $offline)"
else
  echo "advisories SKIPPED: the RustSec database cannot be fetched here and no offline copy exists"
fi
