#!/usr/bin/env bash
# elect.sh — leader election with nothing but curl and jq.
#
#   elect.sh [lead] [ELECTION]
#       Campaign in ELECTION (default "demo") with a lease of its own (TTL), waiting up to
#       WAIT to become leader; keep the lease alive every TTL/3 while leading; do some
#       leader work (STEPS pauses of STEP_SECONDS, each tagged with the leadership's
#       fencing token); proclaim a new value (PROCLAIM) so observers see it; resign.
#       If the lease ends (keepalive 404) the script stops acting as leader and exits 4.
#       On exit for any reason a trap stops the keepalive loop and resigns if it still
#       leads, so followers take over at once instead of after the TTL.
#
#   elect.sh observe [ELECTION] [CHANGES] [SECONDS]
#       Print the current leader, then follow leadership changes with blocking GETs
#       (`?index=N&wait=…`), one line per change (new leader, proclaimed value, no
#       leader), until CHANGES changes were seen (default 10) or SECONDS passed (default
#       60). Exits 0 either way; the last line says how many changes it saw.
#
# Settings (environment):
#   REGISTRY      registry URL                      (default http://127.0.0.1:7400)
#   TTL           the candidacy's lease TTL         (default 10s; 1s to 24h)
#   WAIT          how long to wait to become leader (default 30s; at most 10m)
#   CANDIDATE     the value announced while leading (default HOSTNAME/PID; e.g. an address)
#   PROCLAIM      the value proclaimed later        (default "CANDIDATE (proclaimed)")
#   STEPS         leader work steps                 (default 3)
#   STEP_SECONDS  length of one step                (default 1)
#
# Exit codes: 0 done (resigned); 1 not elected within WAIT, or an error; 4 leadership lost;
# 130/143 interrupted (resigned).
set -euo pipefail

REGISTRY=${REGISTRY:-http://127.0.0.1:7400}
REGISTRY=${REGISTRY%/}
MODE=lead
case ${1:-} in
  lead | observe)
    MODE=$1
    shift
    ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
esac
ELECTION=${1:-demo}

for tool in curl jq; do
  command -v "$tool" >/dev/null || { echo "elect.sh: $tool is required" >&2; exit 1; }
done

MAIN_PID=$$
WORKDIR=$(mktemp -d "${TMPDIR:-/tmp}/elect-sh.XXXXXX")
LOST_MARKER=$WORKDIR/lost # exists once leadership is known (or feared) to be lost
TOKEN=""                  # set while we lead
LEASE=""
KEEPALIVE_PID=""
SLEEP_PID=""
CURL_PID=""

say() { printf '%s\n' "$*"; }
err() { printf 'elect.sh: %s\n' "$*" >&2; }
now_ms() { date +%s%3N; }

# call MAX_SECONDS METHOD PATH [JSON]: one request; sets STATUS (the HTTP status, 000 if
# there was no answer), BODY, and INDEX (the X-Registry-Index header). curl runs in the
# background and is waited for, so signals are handled at once, even during long waits.
call() {
  local out=$WORKDIR/answer.$BASHPID
  local args=(-sS --connect-timeout 5 -o "$out" -D "$out.headers" -w '%{http_code}' -X "$2")
  [ "$1" = 0 ] || args+=(--max-time "$1")
  [ $# -lt 4 ] || args+=(-H 'content-type: application/json' --data-binary "$4")
  curl "${args[@]}" "$REGISTRY$3" >"$out.status" &
  CURL_PID=$!
  while ! wait "$CURL_PID"; do kill -0 "$CURL_PID" 2>/dev/null || break; done
  CURL_PID=""
  STATUS=000 BODY=""
  [ ! -s "$out.status" ] || read -r STATUS <"$out.status" || true # no newline: read says 1
  [ ! -f "$out" ] || BODY=$(<"$out")
  INDEX=$(tr -d '\r' <"$out.headers" 2>/dev/null |
    awk 'tolower($1) == "x-registry-index:" { print $2 }' || true)
  rm -f "$out" "$out.status" "$out.headers"
}

error_of() {
  jq -r '"\(.error.code): \(.error.message)"' <<<"$BODY" 2>/dev/null || printf '%s' "$BODY"
}

pause() {
  sleep "$1" >/dev/null 2>&1 &
  SLEEP_PID=$!
  wait "$SLEEP_PID" || true
  SLEEP_PID=""
}

# ----------------------------------------------------------------------------------------
# observe: follow the election with blocking queries.
# ----------------------------------------------------------------------------------------
if [ "$MODE" = observe ]; then
  max_changes=${2:-10}
  max_seconds=${3:-60}
  # shellcheck disable=SC2317 # called by the EXIT trap
  observe_cleanup() {
    local rc=$?
    set +e
    [ -z "$CURL_PID" ] || kill "$CURL_PID" 2>/dev/null
    [ -z "$SLEEP_PID" ] || kill "$SLEEP_PID" 2>/dev/null
    rm -rf "$WORKDIR"
    exit "$rc"
  }
  trap observe_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  deadline=$(($(now_ms) + max_seconds * 1000))

  # describe: one line for the election in BODY, relative to the previous state.
  last_token="" last_value=""
  describe() {
    local token value
    token=$(jq -r '.leader.token // ""' <<<"$BODY")
    value=$(jq -c '.leader.candidate // ""' <<<"$BODY") # JSON-quoted: one line, always
    if [ "$token" = "$last_token" ] && [ "$value" = "$last_value" ]; then
      return 1 # no change (another election woke us, or the wait ran out)
    fi
    if [ -z "$token" ]; then
      say "election $ELECTION: no leader"
    elif [ "$token" = "$last_token" ]; then
      say "election $ELECTION: leader (token $token) proclaimed $value"
    else
      say "election $ELECTION: led by $value (token $token)"
    fi
    last_token=$token last_value=$value
  }

  # The current state, and the index it reflects.
  call 10 GET "/v1/elections/$ELECTION"
  [ "$STATUS" = 200 ] || { err "GET failed (HTTP $STATUS): $(error_of)"; exit 1; }
  describe || true
  index=${INDEX:-0}
  changes=0
  while [ "$changes" -lt "$max_changes" ]; do
    left_ms=$((deadline - $(now_ms)))
    [ "$left_ms" -gt 0 ] || break
    wait_s=$(((left_ms + 999) / 1000))
    # Blocks until the election changes after `index`, or `wait` runs out (the server
    # adds up to 1/16 of jitter, so give curl some slack).
    call $((wait_s + wait_s / 16 + 5)) GET "/v1/elections/$ELECTION?index=$index&wait=${wait_s}s"
    if [ "$STATUS" != 200 ]; then
      # No leader (503) or no answer: back off briefly and ask again.
      err "blocking GET failed (HTTP $STATUS); retrying"
      pause 1
      continue
    fi
    # An index lower than ours means another server that is behind answered: start over
    # rather than wait for an index it may not reach soon.
    if [ "${INDEX:-0}" -lt "$index" ]; then index=0; else index=${INDEX:-0}; fi
    if describe; then changes=$((changes + 1)); fi
  done
  say "observed $changes change(s) of election $ELECTION"
  exit 0
fi

# ----------------------------------------------------------------------------------------
# lead: campaign, keep the lease alive, work, proclaim, resign.
# ----------------------------------------------------------------------------------------
TTL=${TTL:-10s}
WAIT=${WAIT:-30s}
CANDIDATE=${CANDIDATE:-${HOSTNAME:-$(hostname)}/$$}
PROCLAIM=${PROCLAIM:-"$CANDIDATE (proclaimed)"}
STEPS=${STEPS:-3}
STEP_SECONDS=${STEP_SECONDS:-1}

leadership_lost() {
  err "lost leadership of $ELECTION (token $TOKEN): $1"
  : >"$LOST_MARKER"
  kill -USR1 "$MAIN_PID" 2>/dev/null || true
}

# keepalive_loop PERIOD TTL_MS — as in lock.sh.
keepalive_loop() {
  local period=$1 ttl_ms=$2 ok_at sent
  trap 'set +e; kill $SLEEP_PID $CURL_PID 2>/dev/null; exit 0' TERM
  # The first renewal goes out at once: after a wait the server kept the lease alive
  # every TTL/3 and stopped when it answered, so the lease may have only 2/3 of its TTL
  # left. Count it as renewed TTL/3 ago.
  ok_at=$(($(now_ms) - ttl_ms / 3))
  while :; do
    kill -0 "$MAIN_PID" 2>/dev/null || exit 0 # the script is gone: let the lease lapse
    sent=$(now_ms)
    call 5 PUT "/v1/leases/$LEASE/keepalive"
    case $STATUS in
      200) ok_at=$sent ;;
      404)
        leadership_lost "the keepalive answered 404 ($(error_of)): the lease ended"
        exit 0
        ;;
      *)
        if (($(now_ms) - ok_at >= 2 * ttl_ms / 3)); then
          leadership_lost "no keepalive got through for 2/3 of the TTL (last: HTTP $STATUS)"
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

# resign: steps down; the candidacy's own lease is revoked with it. Returns 0 when
# resigned, 1 when leadership turned out to be lost already, 2 on other failures.
resign() {
  call 10 POST "/v1/elections/$ELECTION/resign" "{\"token\":$TOKEN}"
  case $STATUS in
    200)
      say "resigned from election $ELECTION (token $TOKEN)"
      TOKEN=""
      ;;
    409)
      err "resign refused ($(error_of)): leadership was lost"
      TOKEN=""
      : >"$LOST_MARKER"
      return 1
      ;;
    *)
      err "resign failed (HTTP $STATUS $(error_of)); leadership ends when the lease (TTL $TTL) runs out"
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
    resign
  fi
  rm -rf "$WORKDIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap '[ -z "$SLEEP_PID" ] || kill "$SLEEP_PID" 2>/dev/null || true' USR1

still_leading() {
  if [ -e "$LOST_MARKER" ]; then
    err "stopped acting as leader of $ELECTION"
    TOKEN=""
    exit 4
  fi
}

# --- Campaign -------------------------------------------------------------------------
request=$(jq -nc --arg c "$CANDIDATE" --arg ttl "$TTL" --arg wait "$WAIT" \
  '{candidate: $c, ttl: $ttl, wait: $wait}')
say "campaigning in election $ELECTION at $REGISTRY as \"$CANDIDATE\" (ttl $TTL, wait $WAIT)"
# Blocks until we lead or WAIT runs out; the server keeps our lease alive meanwhile.
call 0 POST "/v1/elections/$ELECTION/campaign" "$request"
case $STATUS in
  200) ;;
  409)
    # election_held: the body's "election" shows who leads.
    err "not elected: $(error_of)"
    exit 1
    ;;
  *)
    err "campaign failed (HTTP $STATUS): $(error_of)"
    exit 1
    ;;
esac
read -r TOKEN LEASE TTL_MS < <(jq -r '"\(.token) \(.lease) \(.ttl_ms)"' <<<"$BODY") || true
[[ $TOKEN =~ ^[0-9]+$ && $TTL_MS =~ ^[0-9]+$ ]] || { err "unexpected answer: $BODY"; exit 1; }
say "leading election $ELECTION as \"$CANDIDATE\" with token $TOKEN (lease $LEASE)"

period_ms=$((TTL_MS / 3))
period=$((period_ms / 1000)).$(printf '%03d' $((period_ms % 1000)))
keepalive_loop "$period" "$TTL_MS" &
KEEPALIVE_PID=$!

# --- Leader work ----------------------------------------------------------------------
# Anything the leader does to shared resources should carry TOKEN, as with locks: a
# deposed leader that has not noticed yet is then refused by the resource.
for ((step = 1; step <= STEPS; step++)); do
  still_leading
  say "leader work step $step/$STEPS (token $TOKEN)"
  pause "$STEP_SECONDS"
done

# --- Proclaim a new value (same leadership, same token) ---------------------------------
still_leading
request=$(jq -nc --argjson t "$TOKEN" --arg c "$PROCLAIM" '{token: $t, candidate: $c}')
call 10 POST "/v1/elections/$ELECTION/proclaim" "$request"
case $STATUS in
  200) say "proclaimed \"$PROCLAIM\" in election $ELECTION (token $TOKEN)" ;;
  409)
    err "proclaim refused ($(error_of))"
    : >"$LOST_MARKER"
    still_leading
    ;;
  *)
    err "proclaim failed (HTTP $STATUS): $(error_of)"
    exit 1
    ;;
esac
pause "$STEP_SECONDS" # serve a while under the new value

# --- Resign ---------------------------------------------------------------------------
stop_keepalive
still_leading
rc=0
resign || rc=$?
case $rc in
  0) exit 0 ;;
  1) exit 4 ;;
  *) exit 1 ;;
esac
