#!/usr/bin/env bash
# Runs every fuzz target for N seconds (default 15) with cargo-fuzz (libFuzzer). The toolchain is
# stable, so the sanitizer flags cargo-fuzz passes are enabled with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
cd fuzz
targets=$(cargo fuzz list)
[ -n "$targets" ] || { echo "fuzz: cargo fuzz list found no target"; exit 1; }
for t in $targets; do
  echo "fuzz: $t for ${secs}s"
  # corpus/<target> is the fuzzer's own (not committed); seeds/<target> is the committed seed corpus.
  mkdir -p "corpus/$t"
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  out=$(RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$secs" 2>&1 || true)
  echo "$out" | grep -E "^Done|panicked|ERROR|crash-" || true
  if ls "artifacts/$t"/crash-* >/dev/null 2>&1; then
    echo "fuzz: $t found a crash:"; ls "artifacts/$t"; exit 1
  fi
  # A target that does not build (or never ran) must fail the step, not pass unseen.
  if ! echo "$out" | grep -q "^Done"; then
    echo "fuzz: $t did not run:"; echo "$out" | grep -E "^error" -A6 | head -40; exit 1
  fi
done
