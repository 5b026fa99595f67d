#!/usr/bin/env bash
# A new replica from a snapshot against copying the source's data files, in one run (#14):
# a primary holding about 1 GiB (KEYS keys of 1 KiB, written by `repnode bench`), then
#   1. `cp -r` of the database's directory and `sync` (what immudb's operators do by hand to
#      seed a replica, seed 001), timed;
#   2. `repnode db create app --replica-of ... --wait` on a new server: snapshot transfer,
#      install and catch-up until it serves, timed, with the peak RSS of both servers sampled
#      every 100 ms;
#   3. the digests of both states, which must agree;
#   and, before the log is compacted, a replica that replays the whole log (--replay-history)
#   against reading the log's files.
# Before each timed phase the page cache is dropped (as root), so that every phase reads from
# the disk, as a new replica's source does with a database larger than its memory.
# Prints one line per figure and the ratios; appends them to $OUT (default
# target/bench-results/snapshot.tsv) and writes target/bench-results/snapshot.md for report.py.
#
# Usage: bash benches/compare/snapshot.sh        (env: KEYS=1000000, WORK=/tmp/snapshot-bench)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KEYS=${KEYS:-1000000}
WORK=${WORK:-/tmp/snapshot-bench}
OUT=${OUT:-$ROOT/target/bench-results/snapshot.tsv}
MD=${MD:-$ROOT/target/bench-results/snapshot.md}
REPNODE=$ROOT/target/release/repnode
(cd "$ROOT" && cargo build --release -q -p node)

rm -rf "$WORK"; mkdir -p "$WORK" "$(dirname "$OUT")" "$(dirname "$MD")"
cold() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "cannot drop the page cache (not root?): reads may be warm" >&2; }
client() { "$REPNODE" "$@" --tls-dir "$WORK/certs"; }
"$REPNODE" certs init --dir "$WORK/certs" --nodes snap-p,snap-r >/dev/null
P=127.0.0.1:58440 R=127.0.0.1:58441
"$REPNODE" serve --name snap-p --dir "$WORK/p" --listen $P --tls-dir "$WORK/certs" 2>"$WORK/p.log" &
PP=$!
trap 'kill $PP ${RP:-} 2>/dev/null || true' EXIT
for _ in $(seq 50); do client db list --server $P >/dev/null 2>&1 && break; sleep 0.2; done
client db create app --server $P >/dev/null

echo "filling: $KEYS keys of 1 KiB" >&2
client bench --db app --server $P --clients 16 --count "$KEYS" --value-size 1024 --json > "$WORK/fill.json"
LAST=$(client status --db app --server $P --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["committed"]["tx_id"])')
DB_DIR=$WORK/p/databases/app
LOG_BYTES=$(du -sb "$DB_DIR" | cut -f1)

# 1. The floor: copy the database's files (its log) and make the copy durable.
cold
T0=$(date +%s.%N)
cp -r "$DB_DIR" "$WORK/copy"
sync
T1=$(date +%s.%N)
CP_SECS=$(echo "$T1 - $T0" | bc -l)
rm -rf "$WORK/copy"

# Catch-up from the log, for comparison: a replica that replays the whole history, against
# reading the log's files (the raw read throughput of what it replays).
L=127.0.0.1:58442
"$REPNODE" serve --name snap-r --dir "$WORK/l" --listen $L --tls-dir "$WORK/certs" 2>"$WORK/l.log" &
LP=$!
for _ in $(seq 50); do client db list --server $L >/dev/null 2>&1 && break; sleep 0.2; done
cold
T0=$(date +%s.%N)
client db create app --replica-of "$P/app" --replay-history --wait --timeout 600 --server $L --json > "$WORK/log-replica.json"
T1=$(date +%s.%N)
LOG_SECS=$(echo "$T1 - $T0" | bc -l)
kill $LP; wait $LP 2>/dev/null || true
rm -rf "$WORK/l"
SEG_BYTES=$(du -cb "$DB_DIR"/log/*.seg | tail -1 | cut -f1)
cold
T0=$(date +%s.%N)
cat "$DB_DIR"/log/*.seg > /dev/null
T1=$(date +%s.%N)
READ_SECS=$(echo "$T1 - $T0" | bc -l)

# The snapshot the new replica will get (taken now, as retention would).
client db compact app --server $P --json > "$WORK/compact.json"
SNAP_BYTES=$(python3 -c 'import json; print(json.load(open("'"$WORK"'/compact.json"))["snapshot"]["bytes"])')

# 2. A new replica, until it has caught up and serves.
"$REPNODE" serve --name snap-r --dir "$WORK/r" --listen $R --tls-dir "$WORK/certs" 2>"$WORK/r.log" &
RP=$!
for _ in $(seq 50); do client db list --server $R >/dev/null 2>&1 && break; sleep 0.2; done
peak() { # samples the RSS (KiB) of a pid into a file until told to stop
  local pid=$1 file=$2 max=0 rss
  while [ ! -f "$WORK/stop-sampling" ]; do
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ "${rss:-0}" -gt "$max" ] && max=$rss
    sleep 0.1
  done
  echo "$max" > "$file"
}
BEFORE_P=$(awk '/VmRSS/ {print $2}' /proc/$PP/status)
BEFORE_R=$(awk '/VmRSS/ {print $2}' /proc/$RP/status)
cold
peak $PP "$WORK/peak-p" & S1=$!
peak $RP "$WORK/peak-r" & S2=$!
T0=$(date +%s.%N)
client db create app --replica-of "$P/app" --wait --timeout 600 --server $R --json > "$WORK/created.json"
T1=$(date +%s.%N)
touch "$WORK/stop-sampling"; wait $S1 $S2
NEW_SECS=$(echo "$T1 - $T0" | bc -l)

# 3. The same state on both.
for _ in $(seq 100); do
  AT=$(client db digest app --server $R --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["tx_id"])')
  [ "$AT" -ge "$LAST" ] && break; sleep 0.2
done
DP=$(client db digest app --server $P --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["tx_id"], d["digest"])')
DR=$(client db digest app --server $R --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["tx_id"], d["digest"])')
[ "$DP" = "$DR" ] || { echo "digests differ: $DP / $DR" >&2; exit 1; }

RATIO=$(echo "$NEW_SECS / $CP_SECS" | bc -l)
LOG_RATE=$(echo "$SEG_BYTES / $LOG_SECS / 1048576" | bc -l)
READ_RATE=$(echo "$SEG_BYTES / $READ_SECS / 1048576" | bc -l)
printf 'catch-up from the log (--replay-history)\t%.2f s (%.0f MiB/s)\nreading the log files (cat)\t%.2f s (%.0f MiB/s)\ncatch-up against raw read\t%.2f\n' \
  "$LOG_SECS" "$LOG_RATE" "$READ_SECS" "$READ_RATE" "$(echo "$LOG_RATE / $READ_RATE" | bc -l)"
printf 'keys\t%s\ndatabase directory\t%s bytes\nsnapshot\t%s bytes\ncp -r + sync\t%.2f s\nnew replica caught up (--wait)\t%.2f s\nratio\t%.2f\n' \
  "$KEYS" "$LOG_BYTES" "$SNAP_BYTES" "$CP_SECS" "$NEW_SECS" "$RATIO"
printf 'peak RSS source\t%s MiB (before %s MiB)\npeak RSS new replica\t%s MiB (before %s MiB)\ndigest\t%s\n' \
  "$(( $(cat "$WORK/peak-p") / 1024 ))" "$((BEFORE_P / 1024))" "$(( $(cat "$WORK/peak-r") / 1024 ))" "$((BEFORE_R / 1024))" "$DP"
printf '%s\t%s\t%s\t%s\t%.3f\t%.3f\t%.3f\t%s\t%s\t%.3f\t%.3f\n' "$(date -Is)" "$KEYS" "$LOG_BYTES" "$SNAP_BYTES" "$CP_SECS" "$NEW_SECS" "$RATIO" \
  "$(cat "$WORK/peak-p")" "$(cat "$WORK/peak-r")" "$LOG_SECS" "$READ_SECS" >> "$OUT"
{
  echo "| figure (one run, page cache dropped before each) | measured |"
  echo "|---|---|"
  printf '| database: %s keys of 1 KiB | directory %s MiB, snapshot %s MiB |\n' "$KEYS" "$((LOG_BYTES / 1048576))" "$((SNAP_BYTES / 1048576))"
  printf '| `cp -r` + `sync` of the database directory | %.2f s |\n' "$CP_SECS"
  printf '| new replica from the snapshot, caught up and serving (`db create --wait`) | %.2f s = **%.2fx** cp (target at most 2x) |\n' "$NEW_SECS" "$RATIO"
  printf '| peak RSS during the transfer: source / new replica | %s MiB (%s before) / %s MiB (the state itself: the key-value store holds it in memory) |\n' \
    "$(( $(cat "$WORK/peak-p") / 1024 ))" "$((BEFORE_P / 1024))" "$(( $(cat "$WORK/peak-r") / 1024 ))"
  printf '| a replica replaying the whole log (`--replay-history`) | %.2f s, %.0f MiB/s |\n' "$LOG_SECS" "$LOG_RATE"
  printf '| reading the log files (`cat`) | %.2f s, %.0f MiB/s: catch-up at **%.2f** of it (target at least 0.5) |\n' "$READ_SECS" "$READ_RATE" "$(echo "$LOG_RATE / $READ_RATE" | bc -l)"
} > "$MD"
cat "$MD"
