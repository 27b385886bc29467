#!/usr/bin/env bash
# Measures the time from SIGKILL of the leader to the first accepted write, on a 3-node
# cluster on 127.0.0.1, several times; prints every run and the median.
#   usage: scripts/measure-failover.sh [RUNS] [extra registry-server flags...]
#   env:   BIN=path/to/registry-server (default target/release/registry-server)
set -euo pipefail
runs=${1:-7}; shift || true
bin=${BIN:-target/release/registry-server}
dir=$(mktemp -d)
ports=(17401 17402 17403)
boot="1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}"
declare -A pid
start() {
  local id=$1; shift
  "$bin" --node-id "$id" --data-dir "$dir/n$id" --bootstrap "$boot" "$@" >>"$dir/log$id" 2>&1 &
  pid[$id]=$!
}
cleanup() { for p in "${pid[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
for i in 1 2 3; do start "$i" "$@"; done
leader() { curl -sf --max-time 1 "127.0.0.1:${ports[0]}/v1/cluster" 2>/dev/null | sed -n 's/.*"leader":\([0-9]*\).*/\1/p'; }
all_ready() { for p in "${ports[@]}"; do curl -sf --max-time 1 "127.0.0.1:$p/readyz" >/dev/null || return 1; done; }
results=()
for run in $(seq "$runs"); do
  until all_ready && [ -n "$(leader)" ]; do sleep 0.1; done
  # let heartbeats settle so every follower is in steady state
  sleep 1
  l=$(leader)
  survivor=$(( l % 3 + 1 ))
  t0=$(date +%s%N)
  kill -9 "${pid[$l]}"
  until curl -sf --max-time 5 -X POST "127.0.0.1:${ports[$((survivor-1))]}/v1/leases" \
      -H 'content-type: application/json' -d '{"ttl":"1h"}' >/dev/null; do :; done
  t1=$(date +%s%N)
  ms=$(( (t1 - t0) / 1000000 ))
  echo "run $run: killed leader $l, first accepted write after $ms ms"
  results+=("$ms")
  wait "${pid[$l]}" 2>/dev/null || true
  start "$l" "$@"
done
printf '%s\n' "${results[@]}" | sort -n | awk '{a[NR]=$1} END {printf "median %d ms over %d runs (min %d, max %d)\n", a[int((NR+1)/2)], NR, a[1], a[NR]}'
