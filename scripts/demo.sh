#!/usr/bin/env bash
# The README's first command: build in release mode and start the local demo stack.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace --bins
exec target/release/causeway-control demo "$@"
