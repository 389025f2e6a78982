#!/usr/bin/env bash
# The README's second command: install what is missing, then check formatting, lints and
# run every test (unit and end-to-end against real PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast
else
    cargo test --no-fail-fast
fi
