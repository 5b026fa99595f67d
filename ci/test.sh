#!/usr/bin/env bash
# The test command README.md gives: installs the system packages the tests need (Debian's
# apt), then runs every test. A test whose tool is missing fails naming the package; it never
# skips, so this script installs them first.
#   iproute2  `ip netns`, veth and bridges for node/tests/netns_partition.rs
#   nftables  `nft`, to cut and heal links in that test
# The partition test also needs root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
if ((${#need[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "ci/test.sh: missing ${need[*]}; install them as root: apt-get install ${need[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
exec cargo test --workspace --release "$@"
