#!/usr/bin/env bash
# Harmony Sync as a cluster on one machine, on loopback: three nats-servers clustered
# (deploy/nats-{1,2,3}.conf, streams replicated three times), one PostgreSQL, and several
# `harmony serve` processes sharing them (deploy/harmony.env). docs/CLUSTER.md
# explains it; the cluster fault test (harmony/tests/cluster.rs) runs it the same way.
#
#   scripts/cluster.sh up                  start whatever is not running (builds the release binary)
#   scripts/cluster.sh down                stop everything; the data stays in the cluster directory
#   scripts/cluster.sh status              each member, its pid and address; the JetStream leaders
#   scripts/cluster.sh start|stop|restart MEMBER
#   scripts/cluster.sh kill MEMBER         SIGKILL, as a crash would
#
# Members: nats-1 nats-2 nats-3 postgres serve-1 … serve-N.
#
# Environment:
#   HARMONY_CLUSTER_DIR          where the cluster keeps its data, logs and keys (./cluster-data)
#   HARMONY_CLUSTER_SERVES       how many `harmony serve` processes (3)
#   HARMONY_CLUSTER_PORT_OFFSET  added to every port of the configuration (0)
#   HARMONY_BIN                  the harmony binary to run (else target/release/harmony, built)
#   HARMONY_NATS_SERVER          the nats-server binary (else the pinned release, installed)
#   HARMONY_CLUSTER_SYNC         `always`: every nats-server fsyncs each write before it counts
#                                towards an acknowledgement (`sync_interval: always`); unset:
#                                JetStream's default (to disk within two minutes). See
#                                docs/CLUSTER.md, "Acknowledged events and a power loss".
# Any other HARMONY_* variable (HARMONY_CONFIG, HARMONY_SYNC_LEASE_SECONDS, …) reaches every
# `harmony serve` as it is.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

dir="$(realpath -m "${HARMONY_CLUSTER_DIR:-$root/cluster-data}")"
offset="${HARMONY_CLUSTER_PORT_OFFSET:-0}"
serves="${HARMONY_CLUSTER_SERVES:-3}"
run="$dir/run"
logs="$dir/logs"

port() { echo $(($1 + offset)); }

# A file of deploy/ with its loopback ports moved by the offset (in one pass, so that a moved
# port is never moved again) and the cluster directory in place of the relative paths.
render() {
  local args=() p
  for p in 4222 4223 4224 6222 6223 6224 8222 8223 8224; do
    args+=(-e "s/127\.0\.0\.1:$p\b/127.0.0.1:@$p@/g")
  done
  for p in 4222 4223 4224 6222 6223 6224 8222 8223 8224; do
    args+=(-e "s/@$p@/$(port "$p")/g")
  done
  sed "${args[@]}" -e "s|\./cluster-data/|$dir/|g" -e "s|host=socket_dir|host=$dir/pg|" "$1"
}

# A nats-server configuration with the sync interval HARMONY_CLUSTER_SYNC asks for.
sync_interval() {
  case "${HARMONY_CLUSTER_SYNC:-}" in
    "") cat ;;
    always) sed -e 's/^jetstream {$/jetstream {\n  sync_interval: always/' ;;
    *) echo "HARMONY_CLUSTER_SYNC is \`always\` or unset, not ${HARMONY_CLUSTER_SYNC}" >&2; exit 2 ;;
  esac
}

# A process is alive while it exists and is not a zombie waiting for its parent.
alive() {
  [ -n "${1:-}" ] && [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

pid_of() {
  case "$1" in
    postgres) [ -f "$dir/pg/data/postmaster.pid" ] && head -n1 "$dir/pg/data/postmaster.pid" || true ;;
    *) [ -f "$run/$1.pid" ] && cat "$run/$1.pid" || true ;;
  esac
}

running() { alive "$(pid_of "$1")"; }

# GET a loopback URL; prints the body, fails unless the answer is 2xx.
get() {
  python3 -c 'import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r: sys.stdout.write(r.read().decode())' "$1" 2>/dev/null
}

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
  local seconds="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + seconds))
  local status
  while true; do
    status=0
    "$@" || status=$?
    [ "$status" = 0 ] && return 0
    [ "$status" = 2 ] && return 1
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "cluster: $what did not happen within ${seconds}s" >&2
      return 1
    fi
    sleep 0.2
  done
}

members() {
  echo nats-1 nats-2 nats-3 postgres
  for n in $(seq "$serves"); do echo "serve-$n"; done
}

prepare() {
  umask 077
  mkdir -p "$run" "$logs" "$dir/keys"
  # The keys every serve process shares: generated once, kept apart from the data.
  local key
  for key in master checkpoint; do
    [ -s "$dir/keys/$key.key" ] || head -c 32 /dev/urandom | base64 > "$dir/keys/$key.key"
  done
}

nats_ready() {
  local n="$1"
  grep -q "Server is ready" "$logs/nats-$n.log" 2>/dev/null
}

# The JetStream meta leader, as nats-1..3 see it (any one that answers).
meta_leader() {
  local n body
  for n in 1 2 3; do
    body="$(get "http://127.0.0.1:$(port $((8221 + n)))/jsz")" || continue
    python3 -c 'import json, sys
leader = (json.loads(sys.argv[1]).get("meta_cluster") or {}).get("leader")
print(leader) if leader else sys.exit(1)' "$body" && return 0
  done
  return 1
}

start_nats() {
  local n="${1#nats-}"
  running "nats-$n" && return 0
  ensure_nats_server
  render "$root/deploy/nats-$n.conf" | sync_interval > "$run/nats-$n.conf"
  mkdir -p "$dir/nats-$n"
  # A fresh log for this start, so that readiness is read from this start's lines.
  [ -f "$logs/nats-$n.log" ] && cat "$logs/nats-$n.log" >> "$logs/nats-$n.old.log"
  : > "$logs/nats-$n.log"
  "$HARMONY_NATS_SERVER" -c "$run/nats-$n.conf" </dev/null >>"$logs/nats-$n.log" 2>&1 &
  echo $! > "$run/nats-$n.pid"
  wait_for 30 "nats-$n ready (see $logs/nats-$n.log)" nats_ready "$n"
  echo "nats-$n: pid $(pid_of "nats-$n"), nats://127.0.0.1:$(port $((4221 + n)))"
}

pg_socket_ready() { [ -S "$dir/pg/.s.PGSQL.$(port 5432)" ]; }

start_postgres() {
  running postgres && return 0
  ensure_postgres
  mkdir -p "$dir/pg"
  if [ "$(id -u)" = 0 ]; then
    # PostgreSQL runs as its own user: it needs to pass through the cluster directory.
    chmod o+x "$dir"
    chown postgres "$dir/pg"
  fi
  if [ ! -f "$dir/pg/data/PG_VERSION" ]; then
    "${pg_as[@]}" "$pg_bin/initdb" -D "$dir/pg/data" -A trust -U harmony >"$logs/initdb.log" 2>&1 || {
      cat "$logs/initdb.log" >&2
      exit 1
    }
  fi
  "${pg_as[@]}" "$pg_bin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" -w \
    -o "-c listen_addresses='' -k $dir/pg -p $(port 5432) -c max_connections=300" start >/dev/null || {
    tail -n 20 "$dir/pg/server.log" >&2
    exit 1
  }
  wait_for 30 "PostgreSQL's socket" pg_socket_ready
  if ! "${pg_as[@]}" "$pg_bin/psql" -h "$dir/pg" -p "$(port 5432)" -U harmony -d postgres -tAc \
    "select 1 from pg_database where datname = 'harmony'" | grep -q 1; then
    "${pg_as[@]}" "$pg_bin/createdb" -h "$dir/pg" -p "$(port 5432)" -U harmony harmony
  fi
  echo "postgres: pid $(pid_of postgres), unix socket in $dir/pg"
}

stop_postgres() {
  local mode="$1"
  running postgres || return 0
  ensure_postgres
  "${pg_as[@]}" "$pg_bin/pg_ctl" -D "$dir/pg/data" -m "$mode" -w stop >/dev/null
}

harmony_bin() {
  if [ -n "${HARMONY_BIN:-}" ]; then
    echo "$HARMONY_BIN"
  else
    (cd "$root" && cargo build --release --locked -p harmony --bin harmony >&2)
    echo "$root/target/release/harmony"
  fi
}

serve_ready() { get "http://127.0.0.1:$1/readyz" >/dev/null; }

# Ready, or gone (then the wait stops at once and says so).
serve_ready_or_gone() {
  serve_ready "$2" && return 0
  alive "$(pid_of "$1")" || { echo "cluster: $1 exited" >&2; return 2; }
  return 1
}

start_serve() {
  local n="${1#serve-}"
  running "serve-$n" && return 0
  local bin listen
  bin="$(harmony_bin)"
  listen="127.0.0.1:$(port $((8080 + n)))"
  (
    set -a
    # shellcheck disable=SC1090
    . <(render "$root/deploy/harmony.env")
    set +a
    HARMONY_DATABASE_URL="${HARMONY_DATABASE_URL/localhost\//localhost:$(port 5432)/}"
    export HARMONY_DATABASE_URL
    export HARMONY_LISTEN="$listen" HARMONY_DATA_DIR="$dir/serve-$n"
    HARMONY_MASTER_KEY="$(cat "$dir/keys/master.key")"
    HARMONY_CHECKPOINT_KEY="$(cat "$dir/keys/checkpoint.key")"
    export HARMONY_MASTER_KEY HARMONY_CHECKPOINT_KEY
    exec "$bin" serve </dev/null >>"$logs/serve-$n.log" 2>&1
  ) &
  echo $! > "$run/serve-$n.pid"
  if ! wait_for 60 "serve-$n ready" serve_ready_or_gone "serve-$n" "$(port $((8080 + n)))"; then
    tail -n 20 "$logs/serve-$n.log" >&2
    exit 1
  fi
  echo "serve-$n: pid $(pid_of "serve-$n"), http://$listen"
}

start() {
  case "$1" in
    nats-[123]) start_nats "$1" ;;
    postgres) start_postgres ;;
    serve-*) start_serve "$1" ;;
    *) echo "cluster: no member $1 (members: $(members | tr '\n' ' '))" >&2; exit 2 ;;
  esac
}

# Stops a member: SIGTERM and wait (PostgreSQL: a fast shutdown), or SIGKILL with `kill`.
stop() {
  local member="$1" signal="${2:-TERM}"
  case "$member" in
    postgres)
      if [ "$signal" = KILL ]; then stop_postgres immediate; else stop_postgres fast; fi
      return 0 ;;
    nats-[123] | serve-*) ;;
    *) echo "cluster: no member $member (members: $(members | tr '\n' ' '))" >&2; exit 2 ;;
  esac
  local pid
  pid="$(pid_of "$member")"
  alive "$pid" || return 0
  kill "-$signal" "$pid" 2>/dev/null || true
  wait_for 60 "$member to exit" eval '! alive '"$pid"
  rm -f "$run/$member.pid"
}

status() {
  local member pid
  for member in $(members); do
    pid="$(pid_of "$member")"
    if alive "$pid"; then
      case "$member" in
        nats-*) echo "$member  running  pid $pid  nats://127.0.0.1:$(port $((4221 + ${member#nats-})))" ;;
        postgres) echo "$member  running  pid $pid  $dir/pg" ;;
        serve-*)
          local p=$(port $((8080 + ${member#serve-})))
          if serve_ready "$p"; then
            echo "$member  ready    pid $pid  http://127.0.0.1:$p"
          else
            echo "$member  running  pid $pid  http://127.0.0.1:$p (not ready)"
          fi ;;
      esac
    else
      echo "$member  stopped"
    fi
  done
  echo "JetStream meta leader: $(meta_leader || echo none)"
}

command="${1:-}"
case "$command" in
  up)
    prepare
    for member in nats-1 nats-2 nats-3; do start "$member"; done
    wait_for 60 "a JetStream meta leader" meta_leader >/dev/null
    start postgres
    for n in $(seq "$serves"); do start "serve-$n"; done
    ;;
  down)
    for n in $(seq "$serves" -1 1); do stop "serve-$n"; done
    for member in postgres nats-3 nats-2 nats-1; do stop "$member"; done
    ;;
  status) status ;;
  start) prepare; start "${2:?which member}" ;;
  stop) stop "${2:?which member}" ;;
  restart) stop "${2:?which member}"; prepare; start "$2" ;;
  kill) stop "${2:?which member}" KILL ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
