#!/usr/bin/env bash
# The README's first command: build pgfm and run its guided tour on a throw-away lab (two
# data nodes and a witness, real PostgreSQL on 127.0.0.1): the cluster, a failover after
# the primary's host dies, the old primary rejoining by itself, then teardown.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --quiet
exec target/release/pgfm demo --dir "${PGFM_DEMO_DIR:-/tmp/pgfm-demo}" "$@"
