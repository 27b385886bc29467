#!/usr/bin/env bash
# Benchmarks the registry against etcd on this machine: builds in release, installs etcd
# (Debian's etcd-server) if missing, then runs the same workloads against a 3-node registry
# cluster and a 3-member etcd cluster, one after the other, and prints a table,
# then watch fan-out, failover, memory and the machine's ceilings, and checks the targets.
# Usage: scripts/bench.sh [--quick] [--json PATH] [--only WORKLOAD]... [--extra NAME]... (see `bench --help`)
#    or: scripts/bench.sh --scale [--scale-instances N] [--scale-watchers N] [--scale-hot-watchers N]
#                         [--scale-snapshot-every N] [--scale-only filled|watchers|learners]... [--json PATH]
#        the scale suite instead (no etcd): 1,000,000 instances (fill, RSS, snapshot stalls, latency at
#        size, restart and catch-up), 100,000 parked blocking queries, reads over learners.
# Not part of CI: it takes minutes (the scale suite many) and its figures depend on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}

cargo build --release -p registry-server -p bench

if ! command -v etcd >/dev/null 2>&1 && [ ! -x /usr/bin/etcd ]; then
  echo "etcd not found: installing Debian's etcd-server" >&2
  SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y etcd-server
fi
ETCD=$(command -v etcd || echo /usr/bin/etcd)

exec "$CARGO_TARGET_DIR/release/bench" \
  --server-bin "$CARGO_TARGET_DIR/release/registry-server" --etcd-bin "$ETCD" "$@"
