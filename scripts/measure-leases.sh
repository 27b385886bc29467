#!/usr/bin/env bash
# Lease creation throughput on a 3-node cluster on 127.0.0.1, with 1 and 64 concurrent
# clients (wrk, persistent HTTP/1.1 connections), against the leader and a follower.
#   usage: scripts/measure-leases.sh [SECONDS]
#   env:   BIN=path/to/registry-server (default target/release/registry-server)
# Needs wrk (apt-get install wrk). The issue that adds the benchmark suite replaces this.
set -euo pipefail
secs=${1:-10}
bin=${BIN:-target/release/registry-server}
here=$(cd "$(dirname "$0")" && pwd)
ports=(17501 17502 17503)
source "$here/lib/cluster.sh"
start_cluster
follower=$(( leader % 3 + 1 ))
for target in "leader:$leader" "follower:$follower"; do
  id=${target#*:}
  for c in 1 64; do
    t=$(( c < 2 ? 1 : 2 ))
    echo "== POST /v1/leases to the $target (node $id), $c connections, ${secs}s"
    wrk -t"$t" -c"$c" -d"${secs}s" --latency -s "$here/create-lease.lua" "http://127.0.0.1:${ports[$((id-1))]}/v1/leases" \
      | grep -E "Requests/sec|Non-2xx|Socket errors|^ +50%|^ +99%"
  done
done
