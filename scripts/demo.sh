#!/usr/bin/env bash
# The README's first command: build pgfm and bring up a lab (two data nodes and a
# witness, real PostgreSQL, on 127.0.0.1), then show its status.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --quiet
dir="${PGFM_LAB_DIR:-/tmp/pgfm-demo}"
if [ -f "$dir/lab.json" ]; then
    echo "A lab is already running in $dir:"
    exec target/release/pgfm lab status --dir "$dir"
fi
exec target/release/pgfm lab up --dir "$dir"
