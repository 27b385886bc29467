#!/usr/bin/env bash
# Lock figures on a 3-node cluster on 127.0.0.1 (release build): uncontended
# acquire+release cycles per second (1 and 16 clients, each on a lock of its own), and the
# handoff latency from a release to the next waiter's grant on one contended lock.
# Clients talk to the leader; set ALL=1 to spread them over all three servers.
#   usage: scripts/measure-locks.sh [SECONDS]
#   env:   BIN=path/to/registry-server  BENCH=path/to/lock-bench
set -euo pipefail
secs=${1:-10}
bin=${BIN:-target/release/registry-server}
bench=${BENCH:-target/release/lock-bench}
here=$(cd "$(dirname "$0")" && pwd)
ports=(17701 17702 17703)
source "$here/lib/cluster.sh"
start_cluster
targets="127.0.0.1:${ports[$((leader-1))]}"
if [ "${ALL:-0}" = 1 ]; then
  targets="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
fi
echo "== leader is node $leader; clients talk to $targets"
"$bench" "$targets" uncontended 1 "$secs"
"$bench" "$targets" uncontended 16 "$secs"
"$bench" "$targets" contended 16 "$secs"
