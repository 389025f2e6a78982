#!/usr/bin/env bash
# Write throughput of synchronous against asynchronous replication on the lab (DATA_NODES
# data nodes and a witness on this machine): pgbench's simple-update workload (-N), CLIENTS
# clients, SECONDS seconds, RUNS runs per mode (MODES, default "off on", e.g. "off on
# quorum" with 3 data nodes); prints each run's TPS and the medians.
# Usage: bash scripts/measure-sync.sh [RUNS] [SECONDS] [CLIENTS] [DATA_NODES]
set -euo pipefail
runs=${1:-3}
seconds=${2:-20}
clients=${3:-4}
data_nodes=${4:-2}
modes=${MODES:-off on}
cd "$(dirname "$0")/.."
cargo build --release -q
pgfm=target/release/pgfm
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
dir=/tmp/pgfm-measure-sync
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "pgbench -N -c $clients -j $clients -T $seconds, scale 10, $runs run(s) per mode; lab of $data_nodes data nodes + witness on this machine ($(nproc) cores)"
for mode in $modes; do
    "$pgfm" lab down --dir "$dir" >/dev/null 2>&1 || true
    "$pgfm" lab up --synchronous "$mode" --data-nodes "$data_nodes" --dir "$dir" >/dev/null
    dsn=$("$pgfm" lab status --dir "$dir" --json | python3 -c 'import json,sys; print([n for n in json.load(sys.stdin)["nodes"] if n["role"]=="primary"][0]["dsn"])')
    "$bin/pgbench" -q -i -s 10 "$dsn" >/dev/null 2>&1
    tps=()
    for run in $(seq 1 "$runs"); do
        t=$("$bin/pgbench" -N -c "$clients" -j "$clients" -T "$seconds" "$dsn" 2>/dev/null | awk '/^tps/ {print int($3); exit}')
        echo "  synchronous=$mode run $run: $t tps"
        tps+=("$t")
    done
    printf '%s\n' "${tps[@]}" | median | xargs printf "synchronous=%s median: %s tps\n" "$mode"
    "$pgfm" lab down --dir "$dir" >/dev/null
done
