#!/usr/bin/env bash
# Catalog figures on a 3-node cluster on 127.0.0.1 (release build): registration
# throughput (1 and 64 clients), heartbeat throughput (64 keep-alive connections),
# discovery reads (linearizable and stale) of a 10-instance service, blocking-query
# wake-up latency with 1,000 watchers, and leader RSS with 100,000 instances.
#   usage: scripts/measure-catalog.sh [SECONDS]
#   env:   BIN=path/to/registry-server  WATCH=path/to/watch-latency
# Needs wrk (apt-get install wrk).
set -euo pipefail
secs=${1:-10}
bin=${BIN:-target/release/registry-server}
watch=${WATCH:-target/release/watch-latency}
here=$(cd "$(dirname "$0")" && pwd)
ports=(17601 17602 17603)
source "$here/lib/cluster.sh"
start_cluster
L="127.0.0.1:${ports[$((leader-1))]}"
rss() { awk '/VmRSS/ {print $2}' "/proc/${pids[$((leader-1))]}/status"; }
summary() { grep -E "Requests/sec|Non-2xx|Socket errors|^ +50%|^ +99%" | tr -s ' ' | paste -sd' '; }
empty_rss=$(rss)

echo "== registration, 1 client:  $(PREFIX=a wrk -t1 -c1 -d"${secs}s" --latency -s "$here/register.lua" "http://$L" | summary)"
echo "== registration, 64 clients: $(PREFIX=b wrk -t2 -c64 -d"${secs}s" --latency -s "$here/register.lua" "http://$L" | summary)"

J='content-type: application/json'
for i in $(seq 10); do
  curl -sf -X PUT "$L/v1/services/ten/instances/i$i" -H "$J" -d '{"address":"10.0.0.1","port":8080,"ttl":"1h"}' >/dev/null
done
echo 'wrk.method = "PUT"' >"$dir/put.lua"
echo "== heartbeat, 64 connections: $(wrk -t2 -c64 -d"${secs}s" --latency -s "$dir/put.lua" "http://$L/v1/services/ten/instances/i1/heartbeat" | summary)"
echo "== resolve 10 instances, linearizable, 64 connections: $(wrk -t2 -c64 -d"${secs}s" --latency "http://$L/v1/services/ten" | summary)"
echo "== resolve 10 instances, stale, 64 connections: $(wrk -t2 -c64 -d"${secs}s" --latency "http://$L/v1/services/ten?stale" | summary)"
echo "== blocking queries: $("$watch" "$L" 1000 watched)"

# Fill up to 100,000 instances in all and measure the leader's memory.
count() { curl -sf "$L/v1/services?stale" | python3 -c 'import sys,json; print(sum(s["instances"] for s in json.load(sys.stdin)["services"]))'; }
n=$(count)
round=0
while [ "$n" -lt 100000 ]; do
  # A new prefix each round: wrk numbers instances from 1 again in every run.
  round=$((round + 1))
  PREFIX="m$round" wrk -t2 -c64 -d2s -s "$here/register.lua" "http://$L" >/dev/null
  n=$(count)
done
sleep 1
full_rss=$(rss)
echo "== memory: leader RSS ${empty_rss} KiB empty, ${full_rss} KiB with $n instances: $(( (full_rss - empty_rss) * 1024 / n )) bytes per instance"
