#!/usr/bin/env bash
# The test command README.md gives: installs the system packages the tests need (ci/deps.sh,
# Debian's apt), then runs every test. A test whose tool is missing fails naming the package;
# it never skips, so this script installs them first. The partition test also needs root
# (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
ci/deps.sh
exec cargo test --workspace --release "$@"
