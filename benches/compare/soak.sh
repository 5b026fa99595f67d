#!/usr/bin/env bash
# Memory under sustained load: a repnode cluster (one primary, two replicas, quorum 1) on
# loopback takes 64 clients (each overwriting 1,000 keys, so the data stops growing) for
# SOAK_SECS seconds (default 300) while the primary's resident memory is sampled every
# SAMPLE_SECS (default 5). Writes target/bench-results/soak.tsv (one
# row per sample: seconds, committed writes so far, RSS) and soak.md (peak RSS, and RSS in the
# first and last fifth of the run: flat means memory does not grow with transactions).
#
# Usage: bash benches/compare/soak.sh        (env: SOAK_SECS=300 SAMPLE_SECS=5 CLIENTS=64)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SOAK_SECS=${SOAK_SECS:-300} SAMPLE_SECS=${SAMPLE_SECS:-5} CLIENTS=${CLIENTS:-64}
OUT=$ROOT/target/bench-results
mkdir -p "$OUT"

(cd "$ROOT" && cargo build --release -q -p node)
REPNODE=$ROOT/target/release/repnode RN=${RN:-/tmp/repnode-soak} BASE_PORT=${BASE_PORT:-57540}
. "$ROOT/benches/compare/cluster.sh"
trap cluster_stop EXIT
cluster_start soak
replicated_db soak "acks 1"
PRIMARY=$(cat "$RN/p.pid")

client bench --db soak --clients "$CLIENTS" --duration "$SOAK_SECS" --value-size 64 --key-space 1000 \
  --server "127.0.0.1:$BASE_PORT" --json --progress > "$RN/bench.json" 2> "$RN/progress.txt" &
BENCH=$!
printf 'seconds\twrites\trss_kib\n' > "$OUT/soak.tsv"
start=$(date +%s)
while kill -0 "$BENCH" 2>/dev/null; do
  sleep "$SAMPLE_SECS"
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$PRIMARY/status")
  writes=$(tail -n 1 "$RN/progress.txt" | awk '{print $3}')
  printf '%s\t%s\t%s\n' "$(( $(date +%s) - start ))" "${writes:-0}" "$rss" >> "$OUT/soak.tsv"
done
wait "$BENCH"
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$PRIMARY/status")
python3 - "$OUT/soak.tsv" "$RN/bench.json" "$hwm" "$CLIENTS" > "$OUT/soak.md" <<'PY'
import csv, json, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
bench = json.load(open(sys.argv[2]))
peak_kib, clients = int(sys.argv[3]), sys.argv[4]
fifth = max(1, len(rows) // 5)
mean = lambda part: sum(int(r["rss_kib"]) for r in part) / len(part) / 1024
print(f"{bench['seconds']:.0f} s, {clients} clients, quorum 1 of 2 replicas: "
      f"{bench['writes']:,} writes ({bench['writes_per_second']:.0f}/s, p99 {bench['p99_ms']} ms). "
      f"Primary peak RSS (VmHWM) {peak_kib / 1024:.1f} MiB; mean RSS {mean(rows[:fifth]):.1f} MiB "
      f"in the first fifth of the run, {mean(rows[-fifth:]):.1f} MiB in the last.")
PY
cat "$OUT/soak.md"
