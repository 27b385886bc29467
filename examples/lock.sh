#!/usr/bin/env bash
# lock.sh [LOCK] — do some work under a fenced lock, with nothing but curl and jq.
#
#   1. acquire LOCK (default "demo") with a lease of its own (TTL), optionally waiting
#      in the lock's queue (WAIT);
#   2. keep the lease alive in the background: at once (after a wait the server renewed
#      it until the grant, not after), then every TTL/3; if the registry says the lease
#      is gone (404), or no keepalive got through for 2/3 of the TTL, the lock is lost:
#      the loop leaves a marker and signals the script, which stops writing;
#   3. do the work: every write to the protected resource (fenced-write.sh) carries the
#      lock's fencing token, so a write from a holder that lost the lock without
#      noticing is refused by the resource itself;
#   4. stop the keepalive loop and release the lock with its token.
#
# On exit for any reason (an error, Ctrl-C, SIGTERM) a trap stops the keepalive loop and
# releases the lock if it is still held, so it does not stay taken until the TTL runs out.
#
# Settings (environment):
#   REGISTRY      registry URL                   (default http://127.0.0.1:7400)
#   TTL           the lock's lease TTL           (default 15s; 1s to 24h)
#   WAIT          how long to wait for the lock  (default 0s: give up at once; at most 10m)
#   LOCK_DELAY    lock-delay if our lease expires (default: the server's, 1s; at most 1m)
#   HOLDER        who we are, shown to others    (default HOSTNAME/PID)
#   STEPS         writes to do while holding it  (default 5)
#   STEP_SECONDS  pause between writes           (default 1)
#   STATE_DIR     the protected resource's dir   (default ${TMPDIR:-/tmp}/registry-fenced-LOCK)
#
# Exit codes: 0 work done and lock released; 1 lock not acquired (held, or an error);
# 4 the lock was lost while working (writing stopped); 130/143 interrupted (lock released).
#
# Needs bash, curl, jq and GNU coreutils; fenced-write.sh also needs flock (util-linux).
set -euo pipefail

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
REGISTRY=${REGISTRY:-http://127.0.0.1:7400}
REGISTRY=${REGISTRY%/}
LOCK=${1:-demo}
TTL=${TTL:-15s}
WAIT=${WAIT:-0s}
LOCK_DELAY=${LOCK_DELAY:-}
HOLDER=${HOLDER:-${HOSTNAME:-$(hostname)}/$$}
STEPS=${STEPS:-5}
STEP_SECONDS=${STEP_SECONDS:-1}
STATE_DIR=${STATE_DIR:-${TMPDIR:-/tmp}/registry-fenced-$LOCK}
FENCED_WRITE=${FENCED_WRITE:-$(dirname "$0")/fenced-write.sh}

for tool in curl jq; do
  command -v "$tool" >/dev/null || { echo "lock.sh: $tool is required" >&2; exit 1; }
done

MAIN_PID=$$
WORKDIR=$(mktemp -d "${TMPDIR:-/tmp}/lock-sh.XXXXXX")
LOST_MARKER=$WORKDIR/lost # exists once the lock is known (or feared) to be lost
TOKEN=""                  # set while we hold the lock
LEASE=""
KEEPALIVE_PID=""
SLEEP_PID=""
CURL_PID=""

say() { printf '%s\n' "$*"; }
err() { printf 'lock.sh: %s\n' "$*" >&2; }
now_ms() { date +%s%3N; }

# call MAX_SECONDS METHOD PATH [JSON]: one request; sets STATUS (the HTTP status, 000 if
# there was no answer) and BODY. curl runs in the background and is waited for, so a
# signal (Ctrl-C, SIGTERM, lock loss) is handled at once, even during a long acquire
# wait; the cleanup trap then kills curl, and the registry drops a waiter that went away.
call() {
  local out=$WORKDIR/answer.$BASHPID
  local args=(-sS --connect-timeout 5 -o "$out" -w '%{http_code}' -X "$2")
  [ "$1" = 0 ] || args+=(--max-time "$1")
  [ $# -lt 4 ] || args+=(-H 'content-type: application/json' --data-binary "$4")
  curl "${args[@]}" "$REGISTRY$3" >"$out.status" &
  CURL_PID=$!
  # `wait` returns early when a trapped signal arrives; keep waiting unless curl is gone.
  while ! wait "$CURL_PID"; do kill -0 "$CURL_PID" 2>/dev/null || break; done
  CURL_PID=""
  STATUS=000 BODY=""
  [ ! -s "$out.status" ] || read -r STATUS <"$out.status" || true # no newline: read says 1
  [ ! -f "$out" ] || BODY=$(<"$out")
  rm -f "$out" "$out.status"
}

# The error code and message of an error answer in BODY, or BODY itself.
error_of() {
  jq -r '"\(.error.code): \(.error.message)"' <<<"$BODY" 2>/dev/null || printf '%s' "$BODY"
}

# pause SECONDS: a sleep that a signal interrupts (a foreground sleep would delay traps).
pause() {
  sleep "$1" >/dev/null 2>&1 &
  SLEEP_PID=$!
  wait "$SLEEP_PID" || true
  SLEEP_PID=""
}

# Called in the keepalive loop when the lock is gone, or may be.
lock_lost() {
  err "lost lock $LOCK (token $TOKEN): $1"
  : >"$LOST_MARKER"
  kill -USR1 "$MAIN_PID" 2>/dev/null || true
}

# keepalive_loop PERIOD TTL_MS — runs in the background for as long as we hold the lock.
keepalive_loop() {
  local period=$1 ttl_ms=$2 ok_at sent
  trap 'set +e; kill $SLEEP_PID $CURL_PID 2>/dev/null; exit 0' TERM
  # The first renewal goes out at once: after a wait the server kept the lease alive
  # every TTL/3 and stopped when it answered, so the lease may have only 2/3 of its TTL
  # left. Count it as renewed TTL/3 ago.
  ok_at=$(($(now_ms) - ttl_ms / 3))
  while :; do
    # If the script itself is gone (SIGKILL: no trap ran), stop renewing: the lease
    # then runs out and the lock is freed, instead of being kept by an orphan loop.
    kill -0 "$MAIN_PID" 2>/dev/null || exit 0
    sent=$(now_ms)
    call 5 PUT "/v1/leases/$LEASE/keepalive"
    case $STATUS in
      200)
        # The lease now lives at least TTL after we sent this keepalive.
        ok_at=$sent
        ;;
      404)
        lock_lost "the keepalive answered 404 ($(error_of)): the lease ended"
        exit 0
        ;;
      *)
        # No answer or 503 (a leader election, say): try again next period, but stop
        # writing before the lease could run out unseen.
        if (($(now_ms) - ok_at >= 2 * ttl_ms / 3)); then
          lock_lost "no keepalive got through for 2/3 of the TTL (last: HTTP $STATUS)"
          exit 0
        fi
        err "keepalive failed (HTTP $STATUS $(error_of)); retrying"
        ;;
    esac
    pause "$period"
  done
}

stop_keepalive() {
  if [ -n "$KEEPALIVE_PID" ]; then
    kill "$KEEPALIVE_PID" 2>/dev/null || true
    wait "$KEEPALIVE_PID" 2>/dev/null || true
    KEEPALIVE_PID=""
  fi
}

# release: gives the lock back; as its lease was made for it, the lease is revoked too.
# Returns 0 when released, 1 when the lock turned out to be lost, 2 on other failures.
release() {
  call 10 POST "/v1/locks/$LOCK/release" "{\"token\":$TOKEN}"
  case $STATUS in
    200)
      say "released lock $LOCK (token $TOKEN)"
      TOKEN=""
      ;;
    409)
      # token_mismatch: the lock is no longer ours (our lease expired, or it was revoked).
      err "release refused ($(error_of)): the lock was lost"
      TOKEN=""
      : >"$LOST_MARKER"
      return 1
      ;;
    *)
      err "release failed (HTTP $STATUS $(error_of)); the lock frees itself when its lease (TTL $TTL) runs out"
      return 2
      ;;
  esac
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM USR1
  [ "$rc" -lt 128 ] || err "interrupted (exit $rc)"
  [ -z "$CURL_PID" ] || kill "$CURL_PID" 2>/dev/null
  [ -z "$SLEEP_PID" ] || kill "$SLEEP_PID" 2>/dev/null
  stop_keepalive
  if [ -n "$TOKEN" ] && [ ! -e "$LOST_MARKER" ]; then
    release
  fi
  rm -rf "$WORKDIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# The keepalive loop signals a lost lock: cut the current pause short. The marker file is
# what the work loop checks.
trap '[ -z "$SLEEP_PID" ] || kill "$SLEEP_PID" 2>/dev/null || true' USR1

# Exits with 4 if the lock is lost. Called before every write.
still_holding() {
  if [ -e "$LOST_MARKER" ]; then
    err "stopped writing: lock $LOCK is no longer ours"
    TOKEN=""
    exit 4
  fi
}

# --- 1. Acquire -----------------------------------------------------------------------
request=$(jq -nc --arg ttl "$TTL" --arg wait "$WAIT" --arg holder "$HOLDER" \
  --arg delay "$LOCK_DELAY" \
  '{ttl: $ttl, wait: $wait, holder: $holder}
   + (if $delay == "" then {} else {lock_delay: $delay} end)')
say "acquiring lock $LOCK at $REGISTRY as $HOLDER (ttl $TTL, wait $WAIT)"
# No --max-time: the server answers when the lock is granted or WAIT runs out (at most
# 10m), keeping our lease alive while we wait in line.
call 0 POST "/v1/locks/$LOCK/acquire" "$request"
case $STATUS in
  200) ;;
  409)
    # lock_held: the body's "lock" shows the holder, waiters and any lock-delay.
    err "could not acquire lock $LOCK: $(error_of)"
    exit 1
    ;;
  *)
    err "acquire failed (HTTP $STATUS): $(error_of)"
    exit 1
    ;;
esac
read -r TOKEN LEASE TTL_MS < <(jq -r '"\(.token) \(.lease) \(.ttl_ms)"' <<<"$BODY") || true
[[ $TOKEN =~ ^[0-9]+$ && $TTL_MS =~ ^[0-9]+$ ]] || { err "unexpected answer: $BODY"; exit 1; }
say "acquired lock $LOCK with token $TOKEN (lease $LEASE, ttl ${TTL_MS}ms)"

# --- 2. Keepalive loop ----------------------------------------------------------------
period_ms=$((TTL_MS / 3))
period=$((period_ms / 1000)).$(printf '%03d' $((period_ms % 1000)))
keepalive_loop "$period" "$TTL_MS" &
KEEPALIVE_PID=$!
say "keeping lease $LEASE alive every ${period}s"

# --- 3. Work, passing the token to the protected resource ----------------------------
for ((step = 1; step <= STEPS; step++)); do
  still_holding
  if "$FENCED_WRITE" "$STATE_DIR" "$TOKEN" "step $step/$STEPS by $HOLDER"; then
    say "wrote step $step/$STEPS to $STATE_DIR with token $TOKEN"
  else
    rc=$?
    if [ "$rc" = 3 ]; then
      # The resource has seen a newer token: someone else holds the lock now.
      err "the resource refused token $TOKEN as stale"
      : >"$LOST_MARKER"
      still_holding
    fi
    err "fenced write failed (exit $rc)"
    exit 1
  fi
  [ "$step" = "$STEPS" ] || pause "$STEP_SECONDS"
done

# --- 4. Release -----------------------------------------------------------------------
# Stop renewing first: once the lock is released its lease is revoked, and a keepalive
# racing with the release would see 404 and report a loss that is none.
stop_keepalive
still_holding
rc=0
release || rc=$?
case $rc in
  0) exit 0 ;;
  1) exit 4 ;;
  *) exit 1 ;;
esac
