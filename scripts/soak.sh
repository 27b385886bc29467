#!/usr/bin/env bash
# Fault-injection soak: runs seeded fault schedules against 3- and 5-node clusters
# (partitions, one-way loss, delays, SIGKILL, SIGSTOP, whole-cluster restarts) with every
# history checked, until the time is up or a run finds an anomaly.
#
#   scripts/soak.sh                      30 minutes of 60 s runs
#   scripts/soak.sh --duration 2h        longer
#   scripts/soak.sh --seed 123 --nodes 5 reproduce one run
#
# Flags are fault-soak's (`--help`). Uses the debug build the tests use.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build -p registry-server -p tests --bin registry-server --bin fault-soak
exec "${CARGO_TARGET_DIR:-target}/debug/fault-soak" "$@"
