#!/usr/bin/env bash
# Floods the leader of a 3-node cluster on 127.0.0.1 (release build, default limits) with
# 5,000 blocking queries, 2,000 idle or byte-at-a-time connections, and writes from 2,000
# writers, each for SECONDS (default 30), while 100 instances heartbeat; prints heartbeat
# success and p99, leader changes, expired leases, peak leader RSS and recovery time.
#   usage: scripts/flood.sh [SECONDS]
# Not part of CI (tests/tests/overload.rs is its bounded-time version).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
# Two builds: `--bin flood` on both packages would skip the server's own binary.
cargo build --release -p registry-server
cargo build --release -p tests --bin flood
REGISTRY_SERVER_BIN="$CARGO_TARGET_DIR/release/registry-server" \
  exec "$CARGO_TARGET_DIR/release/flood" "${1:-30}"
