# Sourced by scripts/measure-*.sh: runs a 3-node registry cluster on 127.0.0.1.
# Expects `bin` (the server binary) and `ports` (three ports). `start_cluster` sets
# `dir` (data and logs), `pids` (by node id - 1) and `leader` (node id), and stops
# everything when the calling script exits.

stop_cluster() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null
  rm -rf "$dir"
}

start_cluster() {
  dir=$(mktemp -d)
  pids=()
  trap stop_cluster EXIT
  local boot="1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}"
  for i in 1 2 3; do
    "$bin" --node-id "$i" --data-dir "$dir/n$i" --bootstrap "$boot" >"$dir/log$i" 2>&1 &
    pids+=($!)
  done
  # Wait until every node is ready and the first election has settled.
  for p in "${ports[@]}"; do until curl -sf "127.0.0.1:$p/readyz" >/dev/null; do sleep 0.1; done; done
  sleep 2
  leader=$(curl -sf "127.0.0.1:${ports[0]}/v1/cluster" | sed -n 's/.*"leader":\([0-9]*\).*/\1/p')
}
