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
dir=$(mktemp -d)
ports=(17501 17502 17503)
boot="1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
for i in 1 2 3; do "$bin" --node-id "$i" --data-dir "$dir/n$i" --bootstrap "$boot" >"$dir/log$i" 2>&1 & pids+=($!); done
# Wait until every node is ready and the first election has settled.
for p in "${ports[@]}"; do until curl -sf "127.0.0.1:$p/readyz" >/dev/null; do sleep 0.1; done; done
sleep 2
leader=$(curl -sf "127.0.0.1:${ports[0]}/v1/cluster" | sed -n 's/.*"leader":\([0-9]*\).*/\1/p')
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
