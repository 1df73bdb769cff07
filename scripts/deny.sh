#!/usr/bin/env bash
# Supply chain with cargo deny (deny.toml): licenses, bans and sources always; RustSec advisories
# for both lock files (the workspace's and fuzz/'s) from the live database when it can be
# fetched, else from an offline copy: $CAUSEWAY_ADVISORY_DB (a clone of RustSec/advisory-db),
# one left in ~/.cargo/advisory-dbs by an earlier fetch, or the snapshot vendored in
# supply-chain/advisory-db. The snapshot only speaks for the crates looked up when it was made,
# so a lock file naming any other crate fails the run; and a planted advisory must make cargo
# deny fail, so this check is shown able to fail.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deny >/dev/null || cargo install cargo-deny --locked --version 0.20.2
cargo deny --log-level error check licenses bans sources

manifests=(Cargo.toml fuzz/Cargo.toml)
live_ok=1
for m in "${manifests[@]}"; do
  if ! timeout 120 cargo deny --manifest-path "$m" --config deny.toml --log-level error \
    check advisories 2>/tmp/deny-advisories.log; then
    if ! grep -q "failed to fetch advisory database" /tmp/deny-advisories.log; then
      cat /tmp/deny-advisories.log
      exit 1
    fi
    live_ok=0
    break
  fi
done
if [ "$live_ok" = 1 ]; then
  echo "advisories ok (live RustSec database)"
  exit 0
fi

# cargo deny looks for its database as <db-path>/<name it would have cloned to>, a git repo.
name=$(grep -o 'advisory-db-[0-9a-f]\{16\}' /tmp/deny-advisories.log | head -n 1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed "0,/^version = 2$/s||version = 2\ndb-path = \"$work/dbs\"|" deny.toml > "$work/deny.toml"
mkdir "$work/dbs"

# Runs the advisories check of both workspaces against the database at $1; prints its errors.
check_with() {
  rm -f "$work/dbs/$name"
  ln -s "$1" "$work/dbs/$name"
  local m status=0
  for m in "${manifests[@]}"; do
    cargo deny --offline --manifest-path "$m" --config "$work/deny.toml" --log-level error \
      check advisories 2>>"$work/errors" || status=1
  done
  return $status
}

offline="${CAUSEWAY_ADVISORY_DB:-}"
if [ -z "$offline" ]; then
  offline=$(ls -d "$HOME"/.cargo/advisory-dbs/*/ 2>/dev/null | while read -r d; do
    [ -d "$d/crates" ] && [ -d "$d/.git" ] && echo "$d"; done | head -n 1 || true)
fi
if [ -n "$offline" ] && [ -d "$offline/crates" ]; then
  check_with "$(cd "$offline" && pwd)" || { cat "$work/errors"; exit 1; }
  echo "advisories ok (offline copy at $offline)"
  exit 0
fi

# The vendored snapshot, made a git repo dated when it was checked (cargo deny reads its HEAD).
python3 scripts/advisory_coverage.py supply-chain/checked-crates.txt Cargo.lock fuzz/Cargo.lock
checked=$(sed -n 's/^# checked: \([0-9-]*\).*/\1/p' supply-chain/checked-crates.txt)
snapshot() {
  (cd "$1" && git init -q && git add -A &&
    GIT_AUTHOR_DATE="${checked}T00:00:00Z" GIT_COMMITTER_DATE="${checked}T00:00:00Z" \
      git -c user.name=causeway -c user.email=ci@causeway.invalid commit -qm "$2")
}
cp -r supply-chain/advisory-db "$work/snapshot"
snapshot "$work/snapshot" "advisory-db snapshot of $checked"
check_with "$work/snapshot" || { cat "$work/errors"; exit 1; }
count=$(find supply-chain/advisory-db/crates -name 'RUSTSEC-*.md' | wc -l)

# Self-test: the same check must fail on an advisory that matches a locked h2.
cp -r supply-chain/advisory-db "$work/planted"
mkdir -p "$work/planted/crates/h2"
cat > "$work/planted/crates/h2/RUSTSEC-9999-0001.md" <<'EOF'
```toml
[advisory]
id = "RUSTSEC-9999-0001"
package = "h2"
date = "2026-12-07"

[versions]
patched = [">= 99.0.0"]
```

# Planted by scripts/deny.sh to show the offline check can fail

Not a real advisory.
EOF
snapshot "$work/planted" "planted advisory"
: >"$work/errors"
if check_with "$work/planted" >/dev/null; then
  echo "advisories check is broken: a planted advisory for h2 did not fail it"
  exit 1
fi
if ! grep -q "RUSTSEC-9999-0001" "$work/errors"; then
  cat "$work/errors"
  echo "advisories check is broken: it failed, but not on the planted advisory"
  exit 1
fi
echo "advisories ok (vendored snapshot of $checked: $count advisories;" \
  "every locked crate was looked up; a planted advisory fails the check)"
