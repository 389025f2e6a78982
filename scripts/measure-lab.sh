#!/usr/bin/env bash
# Measure the lab: time of `pgfm lab up` (2 data nodes + witness) over RUNS runs (median),
# then each agent's resident memory and CPU use over an idle minute after a minute of
# settling. Release build, default settings (probe_interval 1s, Raft heartbeat 150ms,
# renewals every 300ms) unless `lab up` options follow RUNS:
#   bash scripts/measure-lab.sh [RUNS [--set SECTION.KEY=VALUE ...]]    (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
shift || true
bash scripts/install-deps.sh
cargo build --release --quiet
pgfm=target/release/pgfm
dir=/tmp/pgfm-measure
[ -f "$dir/lab.json" ] && "$pgfm" lab down --dir "$dir" >/dev/null

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(. /etc/os-release; echo "$PRETTY_NAME"), PostgreSQL $("$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/postgres" --version | awk '{print $3}')"
echo "settings: 2 data nodes + witness, defaults (probe_interval 1s, report_ttl 3s, Raft heartbeat 150ms, lease renewed every 300ms)${*:+ with $*}"
times=()
for i in $(seq "$runs"); do
    start=$(date +%s.%N)
    "$pgfm" lab up --dir "$dir" "$@" >/dev/null
    end=$(date +%s.%N)
    t=$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.2f", b - a}')
    times+=("$t")
    echo "lab up run $i: ${t} s"
    if [ "$i" -lt "$runs" ]; then "$pgfm" lab down --dir "$dir" >/dev/null; fi
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "lab up: median %.2f s, min %.2f s, max %.2f s over %d runs\n", m, a[1], a[NR], NR}'

echo "settling for 60 s..."
sleep 60
hz=$(getconf CLK_TCK)
declare -A before
pids=$(python3 -c "import json; print(' '.join(str(n['agent_pid']) for n in json.load(open('$dir/lab.json'))['nodes']))")
for pid in $pids; do before[$pid]=$(awk '{print $14+$15}' "/proc/$pid/stat"); done
sleep 60
for pid in $pids; do
    after=$(awk '{print $14+$15}' "/proc/$pid/stat")
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    name=$(tr '\0' ' ' < "/proc/$pid/cmdline" | sed -E 's|.*/([^/]+)/pgfm.toml.*|\1|')
    echo "$name agent: RSS $((rss / 1024)) MiB, CPU $(awk -v a="${before[$pid]}" -v b="$after" -v hz="$hz" 'BEGIN {printf "%.2f", 100 * (b - a) / hz / 60}')% of a core over 60 s idle"
done
"$pgfm" lab down --dir "$dir" >/dev/null
