#!/usr/bin/env bash
# How often losing the coordinator's host (not the primary's) fences the healthy primary
# or promotes a standby, in the simulation: seeds 1..N with one host crash each, keeping
# the runs whose crash hit a coordinator that was not the primary (pg1). Extra arguments
# go to pgfm-sim (for example --timing lease=3500ms).
#   bash scripts/sim-coordinator-deaths.sh [N [pgfm-sim options...]]    (default N 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-2000}"
shift || true
cargo build --release --quiet -p pgfm-sim
sim=target/release/pgfm-sim
total=0 fenced=0 promoted=0 started=$(date +%s)
for seed in $(seq "$n"); do
    out=$("$sim" --seed "$seed" --faults host-crash --fault-count 1 --trace "$@" || true)
    line=$(grep "^seed $seed:" <<<"$out" || true)
    grep -q "(Coordinator)" <<<"$line" || continue
    grep -q "pg1 (Coordinator)" <<<"$line" && continue
    total=$((total + 1))
    if grep -q "fencing PostgreSQL" <<<"$out"; then
        fenced=$((fenced + 1))
        echo "seed $seed: the primary fenced itself"
    fi
    if ! grep -q " 0 promotion" <<<"$line"; then
        promoted=$((promoted + 1))
        echo "seed $seed: promotion: $line"
    fi
    if grep -q VIOLATION <<<"$out"; then echo "seed $seed: VIOLATION"; fi
done
echo "coordinator host deaths: $total of $n seeds; primary fenced in $fenced, promotions in $promoted ($(($(date +%s) - started)) s)"
