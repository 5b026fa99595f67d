#!/usr/bin/env bash
# Side by side on loopback, in one run: a repnode cluster (one primary, two replicas) against
# PostgreSQL 15 streaming replication (ANY 1 / ANY 2), a three-member etcd cluster and Redis
# with WAIT, through the peer scripts in ../shared/bench. Same workload everywhere: single
# small writes, 1 and 16 clients, fsync on. Writes BENCHMARKS.md and benchmarks.svg at the root.
#
# Usage: bash benches/compare/run.sh        (env: DUR=10 seconds per measurement, ROUNDS=1)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared/bench" && pwd)}
export DUR=${DUR:-10} ROUNDS=${ROUNDS:-1}
export PEERS_WORK=${PEERS_WORK:-/tmp/peers-bench}
. "$SHARED/common.sh"

log "build repnode"
(cd "$ROOT" && cargo build --release -q -p node)
REPNODE=$ROOT/target/release/repnode

log "install peers and build their load generator"
if ! dpkg -s postgresql etcd-server etcd-client redis-server protobuf-compiler >/dev/null 2>&1; then
  apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql etcd-server etcd-client redis-server protobuf-compiler >/dev/null
fi
systemctl disable etcd redis-server >/dev/null 2>&1 || true
(cd "$SHARED/peerbench" && CARGO_TARGET_DIR=$W/target cargo build --release -q)

RN=$W/repnode BASE_PORT=57440
. "$ROOT/benches/compare/cluster.sh"
stop_all() {
  set +e
  cluster_stop
  bash "$SHARED/redis.sh" stop; bash "$SHARED/etcd.sh" stop; bash "$SHARED/pg.sh" stop
}
trap stop_all EXIT

if [ -f "$RES/results.tsv" ]; then mv "$RES" "$RES.$(date +%s)"; mkdir -p "$RES"; fi
printf 'round\tsystem\tmode\tclients\tsecs\tops\tops_per_s\tavg_ms\tp50_ms\tp99_ms\terrors\tnotes\n' > "$RES/results.tsv"
{ echo "date: $(date -Is)"; uname -sr; echo "cores: $(nproc)"; free -g | sed -n 2p; } > "$RES/env.txt"

log "start repnode: bench-p primary, bench-r1 and bench-r2 replicas"
cluster_start bench
# q0_alone: a primary without replicas, the reference for what asynchronous replication costs.
client db create q0_alone --quorum async --server 127.0.0.1:$BASE_PORT >/dev/null
for mode in "q0_async|async" "q1|acks 1" "q2|acks 2"; do
  replicated_db "${mode%%|*}" "${mode##*|}"
done

log "start peers"
bash "$SHARED/pg.sh" setup
bash "$SHARED/etcd.sh" setup
bash "$SHARED/redis.sh" setup

for r in $(seq 1 "$ROUNDS"); do
  log "===== round $r ====="
  bash "$SHARED/disk.sh" $r
  # The three nodes share this disk: the floor of a replicated commit is a contended sync.
  for mode in append prepared; do
    python3 "$ROOT/benches/compare/fsync_contended.py" "$W" 3 5 $mode |
      while read -r tag sys m c secs ops tput avg p50 p99 err; do
        [ "$tag" = RESULT ] && emit "$r	$sys	$m	$c	$secs	$ops	$tput	$avg	$p50	$p99	$err	3 processes syncing their own files at once"
      done
  done
  for db in q0_alone q0_async q1 q2; do
    for c in 1 16; do
      client bench --db $db --clients $c --duration "$DUR" --value-size 64 --server 127.0.0.1:$BASE_PORT --json |
        python3 -c 'import json,sys; r=json.load(sys.stdin); print("\t".join(map(str,[sys.argv[1],"repnode",sys.argv[2],r["clients"],round(r["seconds"],1),r["writes"],round(r["writes_per_second"],1),round(r["mean_ms"],3),r["p50_ms"],r["p99_ms"],0,"QUIC+mTLS; 64B values; store-file fdatasync"])))' $r $db |
        tee -a "$RES/results.tsv"
    done
  done
  bash "$SHARED/pg.sh" run $r
  bash "$SHARED/etcd.sh" run $r
  bash "$SHARED/redis.sh" run $r
done

log "write BENCHMARKS.md"
python3 "$ROOT/benches/compare/report.py" "$RES/results.tsv" "$RES/env.txt" "$ROOT/BENCHMARKS.md" "$ROOT/benchmarks.svg" "$ROOT/target/bench-results"
log "done"
