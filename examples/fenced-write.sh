#!/usr/bin/env bash
# fenced-write.sh STATE_DIR TOKEN DATA
#
# A tiny "protected resource" for the lock examples: an append-only file that checks
# fencing tokens. It remembers the highest token it has seen (STATE_DIR/highest-token)
# and refuses any write that carries a lower one, then appends "TOKEN DATA" to
# STATE_DIR/data. A write with the same token as the highest is accepted: that is the
# current holder writing again.
#
# Why: a lock holder can be paused (GC, swap, a stopped VM) past its lease, lose the lock
# without knowing, and wake up to write. By then a newer holder got a higher token and
# wrote with it, so the resource has seen that token and turns the old holder away. The
# check and the write happen under one flock, so two writers cannot interleave them.
#
# Exit codes: 0 written; 2 usage error; 3 stale token (rejected, nothing written).
set -euo pipefail

if [ "$#" -ne 3 ]; then
  echo "usage: fenced-write.sh STATE_DIR TOKEN DATA" >&2
  exit 2
fi
state_dir=$1 token=$2 data=$3
data=${data//$'\n'/ } # one record per line

# Tokens are unsigned 64-bit integers; compare them as decimal strings (bash arithmetic
# is signed 64-bit) after dropping leading zeros.
if ! [[ $token =~ ^[0-9]{1,20}$ ]]; then
  echo "fenced-write: token must be a non-negative integer, not '$token'" >&2
  exit 2
fi
canonical() {
  local t=$1
  while [[ $t == 0?* ]]; do t=${t#0}; done
  printf '%s' "${t:-0}"
}
token=$(canonical "$token")

# less_than A B: A < B for canonical decimal strings.
less_than() {
  if [ "${#1}" -ne "${#2}" ]; then
    [ "${#1}" -lt "${#2}" ]
  else
    [[ $1 < $2 ]]
  fi
}

mkdir -p "$state_dir"
# Everything below runs under an exclusive lock on STATE_DIR/.lock (fd 9), held until
# the script exits.
exec 9>>"$state_dir/.lock"
flock 9

highest=0
if [ -s "$state_dir/highest-token" ]; then
  highest=$(canonical "$(tr -dc '0-9' <"$state_dir/highest-token")")
fi

if less_than "$token" "$highest"; then
  echo "fenced-write: rejected stale token $token (highest seen: $highest)" >&2
  exit 3
fi

# Record the token first (atomically, via rename), then write the data.
printf '%s\n' "$token" >"$state_dir/highest-token.tmp"
mv -f "$state_dir/highest-token.tmp" "$state_dir/highest-token"
printf '%s %s\n' "$token" "$data" >>"$state_dir/data"
