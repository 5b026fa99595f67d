#!/usr/bin/env bash
# Installs the system packages the build and the tests need (Debian's apt), when missing:
#   iproute2           `ip netns`, veth and bridges for node/tests/netns_partition.rs
#   nftables           `nft`, to cut and heal links in that test
#   etcd-server        `etcd`, the coordinator of automatic failover (coordinator-etcd's and
#                      the node's failover tests start it on loopback)
#   protobuf-compiler  `protoc`, and libprotobuf-dev its well-known types: the etcd-client
#   libprotobuf-dev    crate compiles etcd's API definitions when it builds
#   python3-prometheus-client  Python's OpenMetrics parser: node/tests/operator.rs parses
#                      the metrics endpoint with it (a real parser, not string matching)
# Tests that need one of them and do not find it fail naming the package; they never skip.
set -euo pipefail
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
/usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1 || need+=(python3-prometheus-client)
if ((${#need[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "ci/deps.sh: missing ${need[*]}; install them as root: apt-get install ${need[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
