# Sourced by run.sh and soak.sh: a local repnode cluster on loopback, one primary and two
# replicas (QUIC with mutual TLS, store-file with fdatasync), and the databases to measure.
#
# Needs: REPNODE (the binary), RN (a work directory), BASE_PORT (the primary's port; the
# replicas take the next two).

client() { "$REPNODE" "$@" --tls-dir "$RN/certs"; }

# cluster_start NAME_PREFIX: starts the three servers and waits until the primary answers.
cluster_start() {
  local prefix=$1
  rm -rf "$RN"; mkdir -p "$RN"
  "$REPNODE" certs init --dir "$RN/certs" --nodes "$prefix-p,$prefix-r1,$prefix-r2" >/dev/null
  local i=0
  for name in p r1 r2; do
    # Three servers share this machine's cores: one runtime worker each (see BENCHMARKS.md).
    "$REPNODE" serve --name "$prefix-$name" --dir "$RN/$name" --listen "127.0.0.1:$((BASE_PORT + i))" \
      --tls-dir "$RN/certs" --threads "${REPNODE_THREADS:-1}" 2>"$RN/$name.log" &
    echo $! > "$RN/$name.pid"
    i=$((i + 1))
  done
  for _ in $(seq 50); do client db list --server "127.0.0.1:$BASE_PORT" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "repnode did not start; see $RN/*.log" >&2
  return 1
}

# replicated_db NAME POLICY: a database on the primary, replicated by both replicas.
replicated_db() {
  client db create "$1" --quorum "$2" --server "127.0.0.1:$BASE_PORT" >/dev/null
  client db create "$1" --replica-of "127.0.0.1:$BASE_PORT/$1" --server "127.0.0.1:$((BASE_PORT + 1))" >/dev/null
  client db create "$1" --replica-of "127.0.0.1:$BASE_PORT/$1" --server "127.0.0.1:$((BASE_PORT + 2))" >/dev/null
}

cluster_stop() {
  for name in p r1 r2; do
    [ -f "$RN/$name.pid" ] && kill "$(cat "$RN/$name.pid")" 2>/dev/null
    rm -f "$RN/$name.pid"
  done
  return 0
}
